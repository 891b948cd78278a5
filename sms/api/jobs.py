"""Bulk jobs in the SMS API (`/api/v1/sms/jobs/`) and cancelling a queued message
(`POST /api/v1/sms/messages/{id}/cancel`): thin views over sms.services.jobs.

An SMS client's logins and keys create jobs and see, pause, resume and cancel their own (another client's job is a
404); the operator's staff see and steer every job of the operator.
"""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import Conflict
from core.api.permissions import StaffOrCustomer
from core.api.viewsets import CustomerScopedMixin
from core.selectors import customer_for_user
from core.tenancy import error_json

from ..models import JobRowOutcome, JobStatus, Message, SmsJob
from ..selectors_jobs import job_report_csv, job_report_filename, job_rows, jobs_progress
from ..services.jobs import (
    JobFileInvalid,
    JobStateError,
    RequestInvalid,
    RequestRefused,
    job_cancel,
    job_create,
    job_file_read,
    job_pause,
    job_resume,
    message_cancel,
)
from .reports import csv_stream_response
from .serializers import MessageSerializer, choice

# --- serializers ---


class JobProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Rows in the file.")
    invalid = serializers.IntegerField(help_text="Rows refused in the file (bad number, empty or too long text).")
    rejected = serializers.IntegerField(help_text="Rows refused at acceptance (blacklist, DND, spam, no route…).")
    accepted = serializers.IntegerField(help_text="Rows accepted as messages.")
    pending = serializers.IntegerField(help_text="Rows not fed yet.")
    cancelled = serializers.IntegerField(help_text="Rows never fed because the job was cancelled.")
    queued = serializers.IntegerField(help_text="Messages waiting to be submitted.")
    held = serializers.IntegerField(help_text="Of the queued, held by the pause.")
    submitted = serializers.IntegerField()
    delivered = serializers.IntegerField()
    undelivered = serializers.IntegerField()
    expired = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Accepted, then refused by every gateway (credit returned).")
    cancelled_messages = serializers.IntegerField(help_text="Queued messages cancelled (credit returned).")
    parts = serializers.IntegerField()
    spent = serializers.DecimalField(max_digits=18, decimal_places=6, help_text="Credit charged.")
    reserved = serializers.DecimalField(max_digits=18, decimal_places=6, help_text="Credit held for queued ones.")
    percent = serializers.IntegerField(help_text="Rows dealt with, in percent.")


class JobSerializer(serializers.ModelSerializer):
    status = choice(JobStatus, read_only=True)
    text = serializers.CharField(source="template", read_only=True)
    validity = serializers.IntegerField(source="validity_s", read_only=True, allow_null=True)
    customer = serializers.IntegerField(source="customer_id", read_only=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = SmsJob
        fields = [
            "id",
            "customer",
            "name",
            "file_name",
            "status",
            "status_reason",
            "text",
            "columns",
            "number_column",
            "validity",
            "callback_url",
            "reference_prefix",
            "scheduled_at",
            "retry_at",
            "started_at",
            "finished_at",
            "created_at",
            "updated_at",
            "progress",
        ]
        read_only_fields = fields

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(source="sender", read_only=True)
        return fields

    @extend_schema_field(JobProgressSerializer)
    def get_progress(self, job) -> dict:
        progress = self.context.get("progress") or jobs_progress(jobs=[job])
        return JobProgressSerializer(progress[job.pk]).data


class JobCreateSerializer(serializers.Serializer):
    """The upload (multipart/form-data); the service checks the options as sending does and the file by line."""

    file = serializers.FileField(help_text="CSV with a header: a `to` (or `number`, `msisdn`…) column and any others.")
    text = serializers.CharField(help_text="The template: {column} is replaced by that column of each row.")
    scheduled_at = serializers.DateTimeField(required=False, help_text="Start then; empty: now.")
    validity = serializers.IntegerField(required=False, help_text="Seconds.")
    callback_url = serializers.URLField(required=False)
    reference_prefix = serializers.CharField(
        required=False, help_text="Each message's client_reference is this and its line number (default job<id>-)."
    )
    name = serializers.CharField(required=False)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(required=False, help_text="Sender id; the client's first by default.")
        return fields


class JobFileErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    column = serializers.CharField()
    reason = serializers.CharField()


class JobRowSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    to = serializers.CharField(source="destination")
    variables = serializers.DictField(child=serializers.CharField())
    outcome = choice(JobRowOutcome)
    reason = serializers.CharField()
    message = serializers.IntegerField(source="message_id", allow_null=True)
    message_status = serializers.SerializerMethodField()
    error_code = serializers.SerializerMethodField()

    def get_message_status(self, row) -> str:
        return row.message.status if row.message_id else ""

    def get_error_code(self, row) -> str:
        return row.message.error_code if row.message_id else ""


# --- views ---


def _file_invalid(exc: JobFileInvalid) -> Response:
    lines = [
        f"line {e['line']}" + (f", column {e['column']}" if e["column"] else "") + f": {e['reason']}"
        for e in exc.errors
    ]
    error = {
        "code": "invalid",
        "message": f"{len(exc.errors)} problem(s) in the file; nothing was stored.",
        "fields": {"file": lines},
    }
    return Response({"error": error, "errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)


def _refused(exc: RequestRefused) -> HttpResponse:
    return error_json(exc.status, exc.code, exc.message)


@extend_schema_view(
    list=extend_schema(summary="The caller's bulk jobs (every job of the operator for staff) with their progress"),
    retrieve=extend_schema(summary="One bulk job with its progress"),
)
class SmsJobViewSet(CustomerScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = SmsJob.objects.select_related("customer")
    serializer_class = JobSerializer
    permission_classes = [StaffOrCustomer]
    customer_field = "customer"
    filterset_fields = ["status"]
    ordering_fields = ["id", "created_at", "scheduled_at"]
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        context = {**self.get_serializer_context(), "progress": jobs_progress(jobs=page)}
        return self.get_paginated_response(JobSerializer(page, many=True, context=context).data)

    @extend_schema(
        summary="Upload a bulk job: a CSV of numbers and variables, a text template, optionally a start time",
        request={"multipart/form-data": JobCreateSerializer},
        responses={
            201: JobSerializer,
            400: OpenApiResponse(
                description="An option is invalid (`fields` names it), or the file is: `errors` lists every bad "
                "line as {line, column, reason} and nothing is stored."
            ),
            403: OpenApiResponse(description="Not an SMS client."),
        },
    )
    def create(self, request, *args, **kwargs):
        data = request.data
        upload = data.get("file")
        if upload is None or isinstance(upload, str):
            raise exceptions.ValidationError({"file": ["Upload the CSV file as `file` (multipart/form-data)."]})
        try:
            source = job_file_read(upload=upload)
        except RequestInvalid as exc:
            raise exceptions.ValidationError(exc.fields) from exc
        fields = ("text", "from", "scheduled_at", "callback_url")
        options = {k: data[k] for k in fields if data.get(k) not in (None, "")}
        if data.get("validity") not in (None, ""):
            try:
                options["validity"] = int(data["validity"])
            except (TypeError, ValueError) as exc:
                raise exceptions.ValidationError({"validity": ["Seconds, as a whole number."]}) from exc
        try:
            job = job_create(
                customer=self.caller_customer,
                source=source,
                options=options,
                name=str(data.get("name") or ""),
                file_name=getattr(upload, "name", "") or "",
                reference_prefix=str(data.get("reference_prefix") or ""),
            )
        except RequestRefused as exc:
            return _refused(exc)
        except RequestInvalid as exc:
            raise exceptions.ValidationError(exc.fields) from exc
        except JobFileInvalid as exc:
            return _file_invalid(exc)
        return Response(JobSerializer(job, context=self.get_serializer_context()).data, status=status.HTTP_201_CREATED)

    def _steer(self, operation) -> Response:
        try:
            job = operation(job=self.get_object())
        except JobStateError as exc:
            raise Conflict(str(exc)) from exc
        return Response(JobSerializer(job, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses={200: JobSerializer, 409: OpenApiResponse(description="Not running.")})
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Pause: stop feeding and hold the job's queued messages (their validity keeps running)."""
        return self._steer(job_pause)

    @extend_schema(request=None, responses={200: JobSerializer, 409: OpenApiResponse(description="Not paused.")})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Resume: release the held messages and go on feeding (or wait for the scheduled time)."""
        return self._steer(job_resume)

    @extend_schema(
        request=None, responses={200: JobSerializer, 409: OpenApiResponse(description="Already cancelled.")}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel for good: rows not sent yet are dropped; queued messages are cancelled and their credit returned."""
        return self._steer(job_cancel)

    @extend_schema(
        summary="The job's report: each row with its outcome and its message's status",
        parameters=[OpenApiParameter("outcome", OpenApiTypes.STR, description="pending, invalid, rejected…")],
        responses=JobRowSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def rows(self, request, pk=None):
        queryset = job_rows(job=self.get_object())
        outcome = request.query_params.get("outcome")
        if outcome:
            if outcome not in JobRowOutcome.values:
                raise exceptions.ValidationError({"outcome": [f"One of: {', '.join(JobRowOutcome.values)}."]})
            queryset = queryset.filter(outcome=outcome)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(JobRowSerializer(page, many=True).data)

    @extend_schema(
        summary="The job's report as CSV (every row)",
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    @action(detail=True, methods=["get"], url_path="report.csv", url_name="report-csv")
    def report_csv(self, request, pk=None):
        job = self.get_object()
        return csv_stream_response(job_report_csv(job=job), request=request, filename=job_report_filename(job))


class MessageCancelView(APIView):
    """Cancel a queued message (a scheduled one, or one still waiting): its credit is returned. Once a submitter has
    taken it, it is too late (409)."""

    permission_classes = [StaffOrCustomer]

    @extend_schema(
        summary="Cancel a message not yet submitted (e.g. scheduled); its credit is returned",
        request=None,
        responses={
            200: MessageSerializer,
            404: OpenApiResponse(description="No such message of the caller."),
            409: OpenApiResponse(description="Already submitted or final."),
        },
    )
    def post(self, request, pk):
        try:
            message = message_cancel(message_id=int(pk), customer=customer_for_user(user=request.user))
        except Message.DoesNotExist as exc:
            raise exceptions.NotFound("No such message.") from exc
        except JobStateError as exc:
            raise Conflict(str(exc)) from exc
        return Response(MessageSerializer(message).data)
