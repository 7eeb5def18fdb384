import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.ingestion.change_stream import ChangeStreamConsumer, default_consumer_name


class Command(BaseCommand):
    help = ("Read change events from a Redis stream through a consumer group and apply them (push sources store "
            "them; other sources sync). Runs until SIGTERM or Ctrl-C.")

    def add_arguments(self, parser):
        parser.add_argument("--stream", required=True, help="the stream's key")
        parser.add_argument("--group", default="ragsite", help="consumer group (default: ragsite)")
        parser.add_argument("--consumer", default=None, help="this consumer's name (default: host-pid)")
        parser.add_argument("--redis-url", default=None,
                            help="default: CHANGE_STREAM_REDIS_URL, else the Celery broker's URL")
        parser.add_argument("--block-ms", type=int, default=5000, help="how long one read waits for messages")
        parser.add_argument("--claim-idle-ms", type=int, default=60_000,
                            help="take over messages another consumer left pending this long")
        parser.add_argument("--max-deliveries", type=int, default=5,
                            help="dead-letter a message delivered this many times without being handled")
        parser.add_argument("--max-iterations", type=int, default=None, help="stop after this many reads")

    def handle(self, *args, stream, group, consumer, redis_url, block_ms, claim_idle_ms, max_deliveries,
               max_iterations, **options):
        import redis

        url = redis_url or getattr(settings, "CHANGE_STREAM_REDIS_URL", None) or settings.CELERY_BROKER_URL
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise CommandError(f"cannot reach Redis at {url.split('@')[-1]}: {exc}") from exc
        consumer = consumer or default_consumer_name()
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)  # finishes the batch in hand; the next read is at most --block-ms away

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        reader = ChangeStreamConsumer(client, stream, group, consumer, block_ms=block_ms,
                                      claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries)
        self.stdout.write(f"consuming {stream!r} as {consumer!r} in group {group!r}")
        self.stdout.flush()
        stats = reader.run(iterations=max_iterations, stop=lambda: bool(stopping))
        self.stdout.write(f"stopped: handled {stats.handled}, reclaimed {stats.reclaimed}, dead-lettered "
                          f"{stats.dead_lettered}, left pending {stats.failed}")
