# GET /up: the process is up and routing. Touches neither PostGIS nor Redis.
class HealthController < ActionController::Base
  def show
    render plain: "ok\n"
  end
end
