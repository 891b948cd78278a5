from rest_framework import serializers

from core.models import ApiKey


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]


class IssuedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself; shown this once, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = ApiKeySerializer.Meta.fields + ["key"]


class MeSerializer(serializers.Serializer):
    email = serializers.EmailField()
    is_staff = serializers.BooleanField()
    operator = serializers.CharField(allow_null=True)
    customer = serializers.DictField(allow_null=True)
