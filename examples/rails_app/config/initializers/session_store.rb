# Sessions live in Redis, not in the cookie: the cookie only carries the session
# id, and ActionDispatch::Session::CacheStore keeps the data in Rails.cache, which
# config/application.rb points at Redis.
Rails.application.config.session_store :cache_store,
  key: "_rails_app_session",
  expire_after: 14.days
