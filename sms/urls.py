from django.urls import path

from . import views, views_jobs

app_name = "sms"

urlpatterns = [
    path("messages/", views.messages_page, name="messages"),
    path("reports/", views.reports_page, name="reports"),
    path("reports/messages.csv", views.reports_csv, name="reports-csv"),
    path("jobs/", views_jobs.jobs_page, name="jobs"),
    path("jobs/<int:pk>/report.csv", views_jobs.job_report, name="job-report"),
    path("jobs/<int:pk>/<str:operation>/", views_jobs.job_action, name="job-action"),
]
