"""Rerate runs are computed and confirmed on a worker: their states, progress counts and why one failed.

Depends on 0006 (another change of this session); existing "draft" runs are ready what-ifs.
"""

from django.db import migrations, models


def drafts_ready(apps, schema_editor):
    apps.get_model("billing", "RerateRun").objects.filter(status="draft").update(status="ready")


def ready_drafts(apps, schema_editor):
    # Before this migration a run was a draft or confirmed: whatever is not confirmed goes back to draft.
    apps.get_model("billing", "RerateRun").objects.exclude(status="confirmed").update(status="draft")


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_reservation_credit_grants"),
    ]

    operations = [
        migrations.AlterField(
            model_name="reraterun",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Re-rating"),
                    ("ready", "What-if ready"),
                    ("confirming", "Confirming"),
                    ("confirmed", "Confirmed"),
                    ("failed", "Failed"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="reraterun",
            name="progress_total",
            field=models.PositiveBigIntegerField(default=0, help_text="CDRs of the period in scope."),
        ),
        migrations.AddField(
            model_name="reraterun",
            name="progress_done",
            field=models.PositiveBigIntegerField(default=0, help_text="Of which re-rated (or skipped) so far."),
        ),
        migrations.AddField(
            model_name="reraterun",
            name="error_code",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddField(
            model_name="reraterun",
            name="error",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="reraterun",
            name="started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="reraterun",
            name="finished_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(drafts_ready, ready_drafts),
    ]
