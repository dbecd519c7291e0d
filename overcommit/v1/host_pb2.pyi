from overcommit.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DiscardMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCARD_MODE_UNSPECIFIED: _ClassVar[DiscardMode]
    DISCARD_MODE_DONTNEED: _ClassVar[DiscardMode]
    DISCARD_MODE_FREE: _ClassVar[DiscardMode]
    DISCARD_MODE_DISABLED: _ClassVar[DiscardMode]

class ReportStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_STATUS_UNSPECIFIED: _ClassVar[ReportStatus]
    REPORT_STATUS_OK: _ClassVar[ReportStatus]
    REPORT_STATUS_ERROR: _ClassVar[ReportStatus]
DISCARD_MODE_UNSPECIFIED: DiscardMode
DISCARD_MODE_DONTNEED: DiscardMode
DISCARD_MODE_FREE: DiscardMode
DISCARD_MODE_DISABLED: DiscardMode
REPORT_STATUS_UNSPECIFIED: ReportStatus
REPORT_STATUS_OK: ReportStatus
REPORT_STATUS_ERROR: ReportStatus

class RegisterGuestRequest(_message.Message):
    __slots__ = ("experiment_id", "host_id", "shard_id", "guest_id", "nr_pages", "size_bytes", "discard_mode", "page_size_bytes", "guest_thp", "report_capacity", "max_order")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISCARD_MODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GUEST_THP_FIELD_NUMBER: _ClassVar[int]
    REPORT_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ORDER_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    host_id: int
    shard_id: int
    guest_id: int
    nr_pages: int
    size_bytes: int
    discard_mode: DiscardMode
    page_size_bytes: int
    guest_thp: bool
    report_capacity: int
    max_order: int
    def __init__(self, experiment_id: _Optional[str] = ..., host_id: _Optional[int] = ..., shard_id: _Optional[int] = ..., guest_id: _Optional[int] = ..., nr_pages: _Optional[int] = ..., size_bytes: _Optional[int] = ..., discard_mode: _Optional[_Union[DiscardMode, str]] = ..., page_size_bytes: _Optional[int] = ..., guest_thp: _Optional[bool] = ..., report_capacity: _Optional[int] = ..., max_order: _Optional[int] = ...) -> None: ...

class RegisterGuestResponse(_message.Message):
    __slots__ = ("guest_id", "host_id", "nr_pages", "next_epoch")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    guest_id: int
    host_id: int
    nr_pages: int
    next_epoch: int
    def __init__(self, guest_id: _Optional[int] = ..., host_id: _Optional[int] = ..., nr_pages: _Optional[int] = ..., next_epoch: _Optional[int] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("op_seq", "pfns", "orders")
    OP_SEQ_FIELD_NUMBER: _ClassVar[int]
    PFNS_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    op_seq: int
    pfns: _containers.RepeatedScalarFieldContainer[int]
    orders: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, op_seq: _Optional[int] = ..., pfns: _Optional[_Iterable[int]] = ..., orders: _Optional[_Iterable[int]] = ...) -> None: ...

class GuestEpochOps(_message.Message):
    __slots__ = ("guest_id", "reports", "touched", "freed", "epoch_seq_ends")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_FIELD_NUMBER: _ClassVar[int]
    FREED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SEQ_ENDS_FIELD_NUMBER: _ClassVar[int]
    guest_id: int
    reports: _containers.RepeatedCompositeFieldContainer[ReportBatch]
    touched: _common_pb2.SequencedPageRuns
    freed: _common_pb2.SequencedPageRuns
    epoch_seq_ends: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, guest_id: _Optional[int] = ..., reports: _Optional[_Iterable[_Union[ReportBatch, _Mapping]]] = ..., touched: _Optional[_Union[_common_pb2.SequencedPageRuns, _Mapping]] = ..., freed: _Optional[_Union[_common_pb2.SequencedPageRuns, _Mapping]] = ..., epoch_seq_ends: _Optional[_Iterable[int]] = ...) -> None: ...

class SyncEpochRequest(_message.Message):
    __slots__ = ("experiment_id", "host_id", "shard_id", "epoch", "sequence", "epoch_end_ns", "guests", "next_epoch", "epochs", "sample")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_END_NS_FIELD_NUMBER: _ClassVar[int]
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    host_id: int
    shard_id: int
    epoch: int
    sequence: int
    epoch_end_ns: int
    guests: _containers.RepeatedCompositeFieldContainer[GuestEpochOps]
    next_epoch: int
    epochs: int
    sample: bool
    def __init__(self, experiment_id: _Optional[str] = ..., host_id: _Optional[int] = ..., shard_id: _Optional[int] = ..., epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., epoch_end_ns: _Optional[int] = ..., guests: _Optional[_Iterable[_Union[GuestEpochOps, _Mapping]]] = ..., next_epoch: _Optional[int] = ..., epochs: _Optional[int] = ..., sample: _Optional[bool] = ...) -> None: ...

class SyncEpochsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SyncEpochRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SyncEpochRequest, _Mapping]]] = ...) -> None: ...

class SyncEpochsResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SyncEpochResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SyncEpochResponse, _Mapping]]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("op_seq", "status", "discarded_pages", "latency_ns")
    OP_SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_PAGES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    op_seq: int
    status: ReportStatus
    discarded_pages: int
    latency_ns: int
    def __init__(self, op_seq: _Optional[int] = ..., status: _Optional[_Union[ReportStatus, str]] = ..., discarded_pages: _Optional[int] = ..., latency_ns: _Optional[int] = ...) -> None: ...

class GuestEpochResult(_message.Message):
    __slots__ = ("guest_id", "report_acks", "swapped_out", "lost_ns", "touched_pages", "stopped")
    class LostNsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TouchedPagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_ACKS_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_OUT_FIELD_NUMBER: _ClassVar[int]
    LOST_NS_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_PAGES_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    guest_id: int
    report_acks: _containers.RepeatedCompositeFieldContainer[ReportAck]
    swapped_out: _common_pb2.PageRuns
    lost_ns: _containers.ScalarMap[str, int]
    touched_pages: _containers.ScalarMap[str, int]
    stopped: bool
    def __init__(self, guest_id: _Optional[int] = ..., report_acks: _Optional[_Iterable[_Union[ReportAck, _Mapping]]] = ..., swapped_out: _Optional[_Union[_common_pb2.PageRuns, _Mapping]] = ..., lost_ns: _Optional[_Mapping[str, int]] = ..., touched_pages: _Optional[_Mapping[str, int]] = ..., stopped: _Optional[bool] = ...) -> None: ...

class SyncEpochResponse(_message.Message):
    __slots__ = ("epoch", "sequence", "guests", "sample_counters")
    class SampleCountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNTERS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sequence: int
    guests: _containers.RepeatedCompositeFieldContainer[GuestEpochResult]
    sample_counters: _containers.ScalarMap[str, int]
    def __init__(self, epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., guests: _Optional[_Iterable[_Union[GuestEpochResult, _Mapping]]] = ..., sample_counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetHostStateRequest(_message.Message):
    __slots__ = ("experiment_id", "host_id", "sample_epoch")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    host_id: int
    sample_epoch: int
    def __init__(self, experiment_id: _Optional[str] = ..., host_id: _Optional[int] = ..., sample_epoch: _Optional[int] = ...) -> None: ...

class GuestCounters(_message.Message):
    __slots__ = ("guest_id", "shard_id", "nr_pages", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    guest_id: int
    shard_id: int
    nr_pages: int
    counters: _containers.ScalarMap[str, int]
    def __init__(self, guest_id: _Optional[int] = ..., shard_id: _Optional[int] = ..., nr_pages: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetHostStateResponse(_message.Message):
    __slots__ = ("host_id", "next_epoch", "epoch_end_ns", "counters", "guests", "shard_ids")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_END_NS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_IDS_FIELD_NUMBER: _ClassVar[int]
    host_id: int
    next_epoch: int
    epoch_end_ns: int
    counters: _containers.ScalarMap[str, int]
    guests: _containers.RepeatedCompositeFieldContainer[GuestCounters]
    shard_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host_id: _Optional[int] = ..., next_epoch: _Optional[int] = ..., epoch_end_ns: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ..., guests: _Optional[_Iterable[_Union[GuestCounters, _Mapping]]] = ..., shard_ids: _Optional[_Iterable[int]] = ...) -> None: ...
