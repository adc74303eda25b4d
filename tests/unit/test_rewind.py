"""Where the micro-batch consumer seeks when a batch must be delivered again (its
dead-letter publish failed): the earliest offset of each partition. Seeking once
per record, as it used to, left each partition at its last record and skipped
the others."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from libs.common.kafka import rewind_offsets


def record(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", partition, offset, 0, 0, None, b"v", None, 0, 1, [])


def test_every_partition_rewinds_to_its_first_record_of_the_batch() -> None:
    batch = [record(0, 7), record(1, 3), record(0, 8), record(0, 9), record(1, 4)]
    assert rewind_offsets(batch) == {TopicPartition("t", 0): 7, TopicPartition("t", 1): 3}


def test_order_within_the_batch_does_not_matter() -> None:
    assert rewind_offsets([record(2, 12), record(2, 10), record(2, 11)]) == {TopicPartition("t", 2): 10}
