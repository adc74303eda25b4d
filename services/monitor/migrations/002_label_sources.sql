-- Who sent a label that waits for its prediction: the live metric keeps each label's sender,
-- so an alarm can say whose labels raised it.
ALTER TABLE pending_labels ADD COLUMN principal text, ADD COLUMN trusted boolean;
