"""The bridge's defaults per process (no imports: bench/bridge.py loads this file).

Measured with ``bench/bridge.py`` on 2 cores, two processes, through the chat
route into Redis: at the earlier 100 in flight a batch could never hold more
than 100 messages; at 200 a batch and 500 in flight the bridge did 8,500-10,300
msg/s, at 500 a batch and 1,000 in flight 12,400-12,600 (fewer statements and
commits per message, fewer concurrent transactions on shared conversations).
"""

# Messages outstanding per subscription (Pub/Sub flow control), as the
# google-cloud-pubsub client's own FlowControl default.
MAX_IN_FLIGHT = 1000
# ... and their bytes at most (again the client's default): a few large
# messages cannot fill the memory.
MAX_IN_FLIGHT_BYTES = 100 * 1024 * 1024
# Messages handled together: what fits in flight for each batch worker, so
# both workers can hold a full batch while the stream refills.
BATCH_SIZE = 500
# Threads handling batches: one's database and broker round trips overlap the
# other's work (a lone process: 8,759 against 6,923 msg/s with one).
BATCH_WORKERS = 2
