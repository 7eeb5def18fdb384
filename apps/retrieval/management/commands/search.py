import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.retrieval.api.serializers import SearchRequestSerializer
from apps.retrieval.index import IndexUnavailable
from apps.retrieval.index.fusion import MODES
from apps.retrieval.search import search_page
from ragsite.api_errors import first_message


class Command(BaseCommand):
    help = "Search as USER would through the API, and print the results."

    def add_arguments(self, parser):
        parser.add_argument("query")
        parser.add_argument("--user", required=True)
        parser.add_argument("--top-k", type=int, default=10, help="results per page")
        parser.add_argument("--offset", type=int, default=0, help="results to skip (the API's offset)")
        parser.add_argument("--mode", choices=MODES, default="hybrid")
        parser.add_argument("--alpha", type=float, default=None, help="hybrid: the dense side's weight (0..1)")
        parser.add_argument("--source", action="append", help="only this source (name or id); repeatable")
        parser.add_argument("--classification", action="append",
                            help="only documents of this classification; repeatable")
        parser.add_argument("--modified-after", help="ISO date or date-time: modified at or after it")
        parser.add_argument("--modified-before", help="ISO date or date-time: modified before it")
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print the API's JSON instead of a table"
        )

    def handle(self, *args, query, user, top_k, offset, mode, alpha, as_json, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user named {user!r}")
        filters = {}
        if options["source"]:
            filters["source"] = [int(s) if s.isdigit() else s for s in options["source"]]
        if options["classification"]:
            filters["classification"] = options["classification"]
        for key in ("modified_after", "modified_before"):
            if options[key]:
                filters[key] = options[key]
        # The API's own serializer: the command accepts and refuses exactly what search/ does.
        request = {"query": query, "top_k": top_k, "offset": offset, "mode": mode, "filters": filters}
        if alpha is not None:
            request["alpha"] = alpha
        params = SearchRequestSerializer(data=request)
        if not params.is_valid():
            raise CommandError(first_message(params.errors))
        try:
            page = search_page(account, **params.validated_data)
        except IndexUnavailable as exc:
            raise CommandError(f"search index unavailable: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps(page.as_dict(), indent=2))
            return
        for warning in page.warnings:
            self.stderr.write(f"warning: {warning}")
        for rank, r in enumerate(page.results, offset + 1):
            self.stdout.write(f"{rank:>2}. {r.score:.3f}  {r.document_title}  [{r.source}] {r.uri}")
            snippet = " ".join(r.text.split())[:160]
            self.stdout.write(f"     {snippet}")
        more = f"; next page: --offset {page.next_offset}" if page.next_offset is not None else ""
        self.stdout.write(f"{len(page.results)} results in {page.took_ms} ms{more}")
