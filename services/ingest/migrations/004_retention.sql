-- Retention (libs/common/retention.py): old rejections go oldest first.
CREATE INDEX rejections_created ON rejections (created_at);
