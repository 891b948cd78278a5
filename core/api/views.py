from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core.models import ApiKey
from core.selectors import customer_for_user
from core.services import api_key_create, api_key_revoke

from .serializers import ApiKeySerializer, IssuedApiKeySerializer, MeSerializer


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """The caller's own API keys: list, create (the key is shown once), revoke."""

    serializer_class = ApiKeySerializer
    queryset = ApiKey.objects.all()
    filterset_fields = ["revoked_at"]

    def get_queryset(self):
        return ApiKey.objects.filter(user=self.request.user)

    @extend_schema(request=ApiKeySerializer, responses={201: IssuedApiKeySerializer})
    def create(self, request, *args, **kwargs):
        serializer = ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = api_key_create(user=request.user, name=serializer.validated_data["name"])
        data = ApiKeySerializer(issued.api_key).data | {"key": issued.raw_key}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        return Response(ApiKeySerializer(api_key_revoke(api_key=self.get_object())).data)


class MeView(APIView):
    """Who the caller is: its login, and the operator and customer it acts for."""

    @extend_schema(responses=MeSerializer)
    def get(self, request):
        customer = customer_for_user(user=request.user)
        tenant = getattr(request, "tenant", None)
        data = {
            "email": request.user.email,
            "is_staff": request.user.is_staff,
            "operator": None if connection.schema_name == "public" else tenant.schema_name,
            "customer": {"id": customer.pk, "name": customer.name, "kind": customer.kind} if customer else None,
        }
        return Response(MeSerializer(data).data)
