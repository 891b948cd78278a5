"""Bulk jobs in the operator console: read-mostly, with pause / resume / cancel actions (the services the client's
panel and the API use) and the report as CSV. A finished or cancelled job may be deleted (its messages stay)."""

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from core.admin import operator_console

from .api.reports import csv_stream_response
from .models import JobStatus, SmsJob
from .selectors_jobs import job_progress, job_report_csv, job_report_filename, jobs_progress
from .services.jobs import JobStateError, job_cancel, job_pause, job_resume


class JobChangeList(ChangeList):
    """The page's jobs carry their progress, counted in one query for the whole page."""

    def get_results(self, request):
        super().get_results(request)
        progress = jobs_progress(jobs=list(self.result_list))
        for job in self.result_list:
            job.progress = progress[job.pk]


@admin.register(SmsJob, site=operator_console)
class SmsJobAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "customer", "name", "status", "scheduled_at", "total_rows", "progress_summary"]
    list_filter = ["status"]
    search_fields = ["=id", "name", "file_name", "customer__name"]
    list_select_related = ["customer"]
    date_hierarchy = "created_at"
    actions = ["pause", "resume", "cancel"]
    fields = [
        "customer",
        "name",
        "file_name",
        "status",
        "status_reason",
        "sender",
        "template",
        "columns",
        "number_column",
        "validity_s",
        "callback_url",
        "reference_prefix",
        "scheduled_at",
        "retry_at",
        "started_at",
        "finished_at",
        "created_at",
        "progress_detail",
        "report",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        if obj is None or obj.status not in (JobStatus.DONE, JobStatus.CANCELLED):
            return False
        return super().has_delete_permission(request, obj)

    def has_steer_permission(self, request):
        """Pause, resume and cancel change jobs: staff who may only look at them may not."""
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # running jobs must be cancelled, not deleted
        return actions

    def get_changelist(self, request, **kwargs):
        return JobChangeList

    @admin.display(description="Progress")
    def progress_summary(self, job):
        progress = job.progress  # set for every row by JobChangeList.get_results
        return (
            f"{progress['percent']}% · {progress['accepted']} accepted, {progress['invalid'] + progress['rejected']} "
            f"refused · {progress['delivered']} delivered · {progress['spent']:.2f} spent"
        )

    @admin.display(description="Progress")
    def progress_detail(self, job):
        progress = job_progress(job=job)
        return format_html(
            "<table>{}</table>",
            format_html("".join(f"<tr><th>{name}</th><td>{{}}</td></tr>" for name in progress), *progress.values()),
        )

    @admin.display(description="Report")
    def report(self, job):
        url = reverse("console:sms_job_report", args=[job.pk])
        return format_html('<a href="{}">CSV, one line per row</a>', url)

    def get_urls(self):
        urls = [
            path(
                "<int:pk>/report.csv",
                self.admin_site.admin_view(self.report_view),
                name="sms_job_report",
            )
        ]
        return urls + super().get_urls()

    def report_view(self, request, pk: int):
        job = get_object_or_404(SmsJob, pk=pk)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return csv_stream_response(job_report_csv(job=job), request=request, filename=job_report_filename(job))

    def _steer(self, request, queryset, operation, verb: str):
        done, refused = 0, []
        for job in queryset:
            try:
                operation(job=job)
                done += 1
            except JobStateError as exc:
                refused.append(f"{job}: {exc}")
        if done:
            messages.success(request, f"{done} job(s) {verb}.")
        for text in refused:
            messages.warning(request, text)

    @admin.action(description="Pause (hold their queued messages)", permissions=["steer"])
    def pause(self, request, queryset):
        self._steer(request, queryset, job_pause, "paused")

    @admin.action(description="Resume", permissions=["steer"])
    def resume(self, request, queryset):
        self._steer(request, queryset, job_resume, "resumed")

    @admin.action(description="Cancel (queued messages cancelled, credit returned)", permissions=["steer"])
    def cancel(self, request, queryset):
        self._steer(request, queryset, job_cancel, "cancelled")
