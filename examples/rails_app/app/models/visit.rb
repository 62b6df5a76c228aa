# One row per page view, with where it came from as a PostGIS point.
# There is no PostGIS adapter gem in Debian: the point goes through plain SQL.
class Visit < ApplicationRecord
  # The geography column is read as text (ST_AsText) when needed, never as a
  # Rails attribute, so Rails never has to know its type.
  self.ignored_columns = ["location"]

  # Inserts a visit at (lon, lat), WGS 84, and returns its id and point as text.
  def self.record!(session_id:, lon:, lat:)
    sql = sanitize_sql_array([<<~SQL, session_id, lon, lat])
      INSERT INTO visits (session_id, location, created_at)
      VALUES (?, ST_SetSRID(ST_MakePoint(?, ?), 4326)::geography, now())
      RETURNING id, ST_AsText(location) AS point
    SQL
    connection.select_one(sql, "Visit Record")
  end
end
