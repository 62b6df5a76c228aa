Rails.application.routes.draw do
  # Readiness: 200 without touching the database or Redis.
  get "/up", to: "health#show"
  root "visits#index"
end
