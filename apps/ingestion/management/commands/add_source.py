import json

from django.core.management.base import BaseCommand, CommandError

from apps.ingestion.sources import SourceError, create_source


class Command(BaseCommand):
    help = "Create a source. A filesystem source takes --path; any type takes --config JSON."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--type", dest="kind", default="filesystem")
        parser.add_argument("--path", help="directory, for a filesystem source")
        parser.add_argument("--config", help="connector settings as a JSON object")
        parser.add_argument("--schedule", default="", help="cron expression for scheduled syncs")
        parser.add_argument("--group", dest="groups", action="append", default=[],
                            help="a group that may read the source (repeat for more); none: every signed-in user")
        parser.add_argument("--classification", default="internal",
                            help="label of its documents (public, internal, confidential, restricted)")

    def handle(self, *args, name, kind, path, config, schedule, groups, classification, **options):
        try:
            settings = json.loads(config) if config else {}
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(settings, dict):
            raise CommandError("--config must be a JSON object")
        if path:
            settings["path"] = path
        try:
            source = create_source(name=name, kind=kind, config=settings, schedule=schedule, groups=groups,
                                   classification=classification)
        except SourceError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"created source {source.name!r} (id {source.pk})")
