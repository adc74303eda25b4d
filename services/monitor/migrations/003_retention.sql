-- Retention (libs/common/retention.py): old predictions, unmatched labels and reports go oldest first.
CREATE INDEX predictions_at ON predictions (at);
CREATE INDEX pending_labels_at ON pending_labels (at);
CREATE INDEX reports_at ON reports (at);
