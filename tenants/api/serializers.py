from rest_framework import serializers

from tenants.choices import Product
from tenants.models import Operator, slug_validator


class OperatorSerializer(serializers.ModelSerializer):
    slug = serializers.CharField(source="schema_name", read_only=True)
    domains = serializers.SlugRelatedField(many=True, read_only=True, slug_field="domain")

    class Meta:
        model = Operator
        fields = [
            "id",
            "slug",
            "name",
            "status",
            "products",
            "time_zone",
            "currency",
            "product_name",
            "primary_colour",
            "accent_colour",
            "support_email",
            "domains",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["status", "created_at", "updated_at"]


class OperatorProvisionSerializer(serializers.Serializer):
    slug = serializers.CharField(
        max_length=41, validators=[slug_validator], help_text="Becomes the schema name: a-z, 0-9, _."
    )
    name = serializers.CharField(max_length=200)
    domain = serializers.CharField(max_length=253)
    admin_email = serializers.EmailField()
    products = serializers.ListField(child=serializers.ChoiceField(choices=Product.choices), required=False)
    time_zone = serializers.CharField(required=False, default="UTC")
    currency = serializers.CharField(required=False, default="EUR", max_length=3)
    product_name = serializers.CharField(required=False, default="", allow_blank=True)


class ProvisionedOperatorSerializer(serializers.Serializer):
    operator = OperatorSerializer()
    console_url = serializers.URLField()
    admin_email = serializers.EmailField()
