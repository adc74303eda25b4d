-- Retention (libs/common/retention.py) deletes published outbox rows and old
-- processed-event ids oldest first; these indexes keep each pass a range scan.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX processed_events_at ON processed_events (processed_at);
