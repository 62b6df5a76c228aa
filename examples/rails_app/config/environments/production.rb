Rails.application.configure do
  config.cache_classes = true
  config.eager_load = true
  config.consider_all_requests_local = false
  config.public_file_server.enabled = false

  # Logs go to stdout: `docker logs`, or Docker's fluentd log driver, take them there.
  config.log_level = ENV.fetch("RAILS_LOG_LEVEL", "info")
  config.log_tags = [:request_id]
  config.log_formatter = ::Logger::Formatter.new
  logger = ActiveSupport::Logger.new($stdout)
  logger.formatter = config.log_formatter
  config.logger = ActiveSupport::TaggedLogging.new(logger)

  config.active_support.deprecation = :notify
  config.active_support.disallowed_deprecation = :log
  config.active_record.dump_schema_after_migration = false
  config.i18n.fallbacks = true
end
