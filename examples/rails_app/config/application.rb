require_relative "boot"

require "rails"
# Only what the app uses: no asset pipeline, mailer, cable, storage or jobs.
require "active_record/railtie"
require "action_controller/railtie"

Bundler.require(*Rails.groups)

module RailsApp
  class Application < Rails::Application
    config.load_defaults 6.1

    # Everything comes from the environment (DATABASE_URL, REDIS_URL,
    # SECRET_KEY_BASE): no credentials file, no master key.
    config.require_master_key = false
    config.generators.system_tests = nil

    # The cache, and so the session store (config/initializers/session_store.rb),
    # is Redis: redis_cache_store ships with Rails 6.1 and needs only the redis gem.
    # Set here, not in an initializer: Rails.cache is built before those run.
    config.cache_store = :redis_cache_store, {
      url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0"),
      namespace: "rails_app",
      connect_timeout: 2,
      read_timeout: 1,
      write_timeout: 1,
      reconnect_attempts: 1
    }
  end
end
