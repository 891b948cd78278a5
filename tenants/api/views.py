from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from core.api.errors import Conflict
from core.api.permissions import IsPlatformStaff
from tenants.choices import OperatorStatus
from tenants.models import Operator
from tenants.services import OperatorConflict, operator_provision, operator_set_status

from .serializers import OperatorProvisionSerializer, OperatorSerializer, ProvisionedOperatorSerializer


class OperatorViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    """Operators of the platform (platform staff keys only): provision, list, brand, suspend, resume."""

    permission_classes = [IsPlatformStaff]
    serializer_class = OperatorSerializer
    queryset = Operator.objects.operators().prefetch_related("domains")
    filterset_fields = ["status"]
    lookup_field = "schema_name"
    lookup_url_kwarg = "slug"

    @extend_schema(request=OperatorProvisionSerializer, responses={201: ProvisionedOperatorSerializer})
    def create(self, request, *args, **kwargs):
        serializer = OperatorProvisionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            result = operator_provision(**serializer.validated_data)
        except OperatorConflict as exc:
            raise Conflict(str(exc)) from exc
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return Response(ProvisionedOperatorSerializer(result).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=OperatorSerializer)
    @action(detail=True, methods=["post"])
    def suspend(self, request, slug=None):
        return Response(
            OperatorSerializer(operator_set_status(operator=self.get_object(), status=OperatorStatus.SUSPENDED)).data
        )

    @extend_schema(request=None, responses=OperatorSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, slug=None):
        return Response(
            OperatorSerializer(operator_set_status(operator=self.get_object(), status=OperatorStatus.ACTIVE)).data
        )
