# The postgis extension is created by the database's first start (it needs a
# superuser); this migration only uses its geography type.
class CreateVisits < ActiveRecord::Migration[6.1]
  def change
    create_table :visits do |t|
      t.string :session_id, null: false
      t.column :location, "geography(Point,4326)", null: false
      t.datetime :created_at, null: false
    end
    add_index :visits, :session_id
    add_index :visits, :location, using: :gist
  end
end
