require "erb"

# GET /: records a visit (a row with a PostGIS point) and counts visits in total
# (PostgreSQL) and in this session (Redis).
class VisitsController < ApplicationController
  DEFAULT_LON = 12.4964 # Rome
  DEFAULT_LAT = 41.9028

  def index
    lon = coordinate(params[:lon], DEFAULT_LON, 180)
    lat = coordinate(params[:lat], DEFAULT_LAT, 90)

    session[:visits] = session[:visits].to_i + 1
    visit = Visit.record!(session_id: session.id.to_s, lon: lon, lat: lat)
    total = Visit.count

    render html: page(total: total, in_session: session[:visits], visit: visit).html_safe
  end

  private

  def coordinate(value, default, limit)
    number = Float(value, exception: false)
    number && number.abs <= limit ? number : default
  end

  def page(total:, in_session:, visit:)
    h = ->(text) { ERB::Util.html_escape(text) }
    <<~HTML
      <!DOCTYPE html>
      <html>
      <head><meta charset="utf-8"><title>Rails on Docker</title></head>
      <body>
      <h1>Rails on Docker</h1>
      <p>Total visits: <span id="total">#{total}</span></p>
      <p>Visits in this session: <span id="session">#{in_session}</span></p>
      <p>This visit: ##{h.(visit["id"])} at <span id="point">#{h.(visit["point"])}</span></p>
      </body>
      </html>
    HTML
  end
end
