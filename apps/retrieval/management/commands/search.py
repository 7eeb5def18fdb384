import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.retrieval.search import SearchError, as_dict, search


class Command(BaseCommand):
    help = "Search as USER would through the API, and print the results."

    def add_arguments(self, parser):
        parser.add_argument("query")
        parser.add_argument("--user", required=True)
        parser.add_argument("--top-k", type=int, default=10)
        parser.add_argument("--mode", choices=["hybrid", "dense", "lexical"], default="hybrid")
        parser.add_argument("--alpha", type=float, default=None, help="hybrid: the dense side's weight (0..1)")
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print the API's JSON instead of a table"
        )

    def handle(self, *args, query, user, top_k, mode, alpha, as_json, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user named {user!r}")
        try:
            results, took_ms = search(account, query, top_k=top_k, mode=mode, alpha=alpha)
        except SearchError as exc:
            raise CommandError(str(exc)) from exc
        if as_json:
            self.stdout.write(json.dumps({"results": [as_dict(r) for r in results], "took_ms": took_ms}, indent=2))
            return
        for rank, r in enumerate(results, 1):
            self.stdout.write(f"{rank:>2}. {r.score:.3f}  {r.document_title}  [{r.source}] {r.uri}")
            snippet = " ".join(r.text.split())[:160]
            self.stdout.write(f"     {snippet}")
        self.stdout.write(f"{len(results)} results in {took_ms} ms")

