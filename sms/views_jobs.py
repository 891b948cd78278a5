"""The client panel's bulk jobs page: upload a CSV with a text template (now or scheduled), follow each job's
progress, pause, resume or cancel it, download its report. The same services as the API's."""

from datetime import datetime

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from .api.reports import csv_stream_response
from .models import SmsJob
from .selectors_jobs import job_list, job_report_csv, job_report_filename, jobs_progress
from .services.jobs import (
    JobFileInvalid,
    JobStateError,
    RequestInvalid,
    RequestRefused,
    job_cancel,
    job_create,
    job_file_read,
    job_pause,
    job_resume,
)
from .views import panel_client, panel_zone

PAGE_SIZE = 20


class JobUploadForm(forms.Form):
    file = forms.FileField(label="CSV file", help_text="A header line with a `to` column and any others.")
    text = forms.CharField(
        label="Text", widget=forms.Textarea(attrs={"rows": 3}), help_text="{column} is replaced by each row's value."
    )
    sender = forms.ChoiceField(label="From", required=False)
    scheduled_at = forms.DateTimeField(
        label="Send at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
        help_text="Empty: now.",
    )
    validity = forms.IntegerField(label="Validity (s)", required=False, min_value=1)
    reference_prefix = forms.CharField(label="Reference prefix", required=False, max_length=80)
    name = forms.CharField(label="Name", required=False, max_length=100)

    def __init__(self, *args, sender_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["sender"].choices = [(s, s) for s in sender_ids] or [("", "—")]


def _own_job(customer, pk: int) -> SmsJob:
    job = job_list(customer=customer).filter(pk=pk).first()
    if job is None:
        raise Http404("No such job.")
    return job


@login_required
def jobs_page(request):
    customer, client = panel_client(request)
    zone = panel_zone(request)
    file_errors: list[dict] = []
    status = 200
    if request.method == "POST":
        form = JobUploadForm(request.POST, request.FILES, sender_ids=client.sender_ids)
        if form.is_valid():
            job, file_errors = _upload(form, customer=customer, zone=zone)
            if job is not None:
                return redirect(f"{request.path}?created={job.pk}")
        status = 400
    else:
        form = JobUploadForm(sender_ids=client.sender_ids)
    page = Paginator(job_list(customer=customer), PAGE_SIZE).get_page(request.GET.get("page"))
    progress = jobs_progress(jobs=list(page))
    context = {
        "customer": customer,
        "form": form,
        "file_errors": file_errors,
        "page": page,
        "jobs": [(job, progress[job.pk]) for job in page],
        "created": request.GET.get("created"),
        "zone": zone,
    }
    return render(request, "sms/jobs.html", context, status=status)


def _upload(form: JobUploadForm, *, customer, zone) -> tuple[SmsJob | None, list[dict]]:
    data = form.cleaned_data
    upload = data["file"]
    try:
        source = job_file_read(upload=upload)
    except RequestInvalid as exc:
        form.add_error("file", exc.fields["file"])
        return None, []
    options: dict = {"text": data["text"]}
    if data.get("sender"):
        options["from"] = data["sender"]
    if data.get("validity"):
        options["validity"] = data["validity"]
    moment: datetime | None = data.get("scheduled_at")
    if moment is not None:  # typed in the operator's time zone
        options["scheduled_at"] = moment.replace(tzinfo=None).replace(tzinfo=zone).isoformat()
    try:
        job = job_create(
            customer=customer,
            source=source,
            options=options,
            name=data.get("name") or "",
            file_name=upload.name or "",
            reference_prefix=data.get("reference_prefix") or "",
        )
    except RequestRefused as exc:
        form.add_error(None, exc.message)
    except RequestInvalid as exc:
        for field, messages in exc.fields.items():
            name = {"from": "sender"}.get(field, field)
            form.add_error(name if name in form.fields else None, messages)
    except JobFileInvalid as exc:
        form.add_error("file", f"{len(exc.errors)} problem(s) in the file; nothing was stored.")
        return None, exc.errors
    else:
        return job, []
    return None, []


_OPERATIONS = {"pause": job_pause, "resume": job_resume, "cancel": job_cancel}


@login_required
@require_POST
def job_action(request, pk: int, operation: str):
    customer, _ = panel_client(request)
    job = _own_job(customer, pk)
    if operation not in _OPERATIONS:
        raise Http404("No such action.")
    try:
        _OPERATIONS[operation](job=job)
    except JobStateError:
        pass  # the page shows the job's current state
    return redirect("sms:jobs")


@login_required
def job_report(request, pk: int):
    customer, _ = panel_client(request)
    job = _own_job(customer, pk)
    return csv_stream_response(job_report_csv(job=job), request=request, filename=job_report_filename(job))
