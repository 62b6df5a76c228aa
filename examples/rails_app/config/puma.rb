# Threads and workers come from the environment (the rails template sets
# RAILS_MAX_THREADS and WEB_CONCURRENCY from its puma_threads and puma_workers).
threads_count = Integer(ENV.fetch("RAILS_MAX_THREADS", 5))
threads threads_count, threads_count

bind "tcp://0.0.0.0:#{ENV.fetch("PORT", 3000)}"
environment ENV.fetch("RAILS_ENV", "production")
pidfile ENV.fetch("PIDFILE", "tmp/pids/server.pid")

workers_count = Integer(ENV.fetch("WEB_CONCURRENCY", 0))
if workers_count > 0
  workers workers_count
  preload_app!
  on_worker_boot do
    ActiveRecord::Base.establish_connection if defined?(ActiveRecord)
  end
end
