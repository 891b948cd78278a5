from django.urls import path

from . import views

app_name = "sms"

urlpatterns = [path("messages/", views.messages_page, name="messages")]
