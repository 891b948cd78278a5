"""Django-level 404/500 handlers: the JSON error shape under /api/, branded pages elsewhere."""

from django.http import HttpResponseNotFound, HttpResponseServerError
from django.template.loader import render_to_string

from .tenancy import error_json, wants_json


def not_found(request, exception=None):
    if wants_json(request):
        return error_json(404, "not_found", "Not found.")
    return HttpResponseNotFound(render_to_string("errors/404.html", request=request))


def server_error(request):
    if wants_json(request):
        return error_json(500, "server_error", "Internal server error.")
    return HttpResponseServerError(render_to_string("errors/500.html"))


def bad_request(request, exception=None):
    return error_json(400, "bad_request", "Bad request.")


def permission_denied(request, exception=None):
    return error_json(403, "permission_denied", "You do not have permission to perform this action.")
