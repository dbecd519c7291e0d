from google.protobuf import struct_pb2 as _struct_pb2
from overcommit.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORTING_STATE_UNSPECIFIED: _ClassVar[ReportingState]
    REPORTING_STATE_IDLE: _ClassVar[ReportingState]
    REPORTING_STATE_REQUESTED: _ClassVar[ReportingState]
    REPORTING_STATE_ACTIVE: _ClassVar[ReportingState]
REPORTING_STATE_UNSPECIFIED: ReportingState
REPORTING_STATE_IDLE: ReportingState
REPORTING_STATE_REQUESTED: ReportingState
REPORTING_STATE_ACTIVE: ReportingState

class ListGuestsRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class GuestSummary(_message.Message):
    __slots__ = ("guest_id", "nr_pages", "host_id", "now_ns", "workload")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    guest_id: int
    nr_pages: int
    host_id: int
    now_ns: int
    workload: str
    def __init__(self, guest_id: _Optional[int] = ..., nr_pages: _Optional[int] = ..., host_id: _Optional[int] = ..., now_ns: _Optional[int] = ..., workload: _Optional[str] = ...) -> None: ...

class ListGuestsResponse(_message.Message):
    __slots__ = ("guests",)
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    guests: _containers.RepeatedCompositeFieldContainer[GuestSummary]
    def __init__(self, guests: _Optional[_Iterable[_Union[GuestSummary, _Mapping]]] = ...) -> None: ...

class AllocOp(_message.Message):
    __slots__ = ("order", "migratetype", "count")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    MIGRATETYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    order: int
    migratetype: int
    count: int
    def __init__(self, order: _Optional[int] = ..., migratetype: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class FreeOp(_message.Message):
    __slots__ = ("order", "pfns", "count")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    PFNS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    order: int
    pfns: _containers.RepeatedScalarFieldContainer[int]
    count: int
    def __init__(self, order: _Optional[int] = ..., pfns: _Optional[_Iterable[int]] = ..., count: _Optional[int] = ...) -> None: ...

class TouchOp(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _common_pb2.PageRuns
    def __init__(self, runs: _Optional[_Union[_common_pb2.PageRuns, _Mapping]] = ...) -> None: ...

class GuestOp(_message.Message):
    __slots__ = ("alloc", "free", "touch")
    ALLOC_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    alloc: AllocOp
    free: FreeOp
    touch: TouchOp
    def __init__(self, alloc: _Optional[_Union[AllocOp, _Mapping]] = ..., free: _Optional[_Union[FreeOp, _Mapping]] = ..., touch: _Optional[_Union[TouchOp, _Mapping]] = ...) -> None: ...

class ApplyOpsRequest(_message.Message):
    __slots__ = ("experiment_id", "guest_id", "ops")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    guest_id: int
    ops: _containers.RepeatedCompositeFieldContainer[GuestOp]
    def __init__(self, experiment_id: _Optional[str] = ..., guest_id: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[GuestOp, _Mapping]]] = ...) -> None: ...

class GuestOpResult(_message.Message):
    __slots__ = ("pfns", "lost_ns")
    PFNS_FIELD_NUMBER: _ClassVar[int]
    LOST_NS_FIELD_NUMBER: _ClassVar[int]
    pfns: _containers.RepeatedScalarFieldContainer[int]
    lost_ns: int
    def __init__(self, pfns: _Optional[_Iterable[int]] = ..., lost_ns: _Optional[int] = ...) -> None: ...

class ApplyOpsResponse(_message.Message):
    __slots__ = ("results", "now_ns")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GuestOpResult]
    now_ns: int
    def __init__(self, results: _Optional[_Iterable[_Union[GuestOpResult, _Mapping]]] = ..., now_ns: _Optional[int] = ...) -> None: ...

class StartWorkloadRequest(_message.Message):
    __slots__ = ("experiment_id", "guest_id", "workload", "params", "duration_ns")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    guest_id: int
    workload: str
    params: _struct_pb2.Struct
    duration_ns: int
    def __init__(self, experiment_id: _Optional[str] = ..., guest_id: _Optional[int] = ..., workload: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., duration_ns: _Optional[int] = ...) -> None: ...

class StartWorkloadResponse(_message.Message):
    __slots__ = ("start_ns", "end_ns")
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    start_ns: int
    end_ns: int
    def __init__(self, start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ...) -> None: ...

class GetGuestStateRequest(_message.Message):
    __slots__ = ("experiment_id", "guest_id")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    guest_id: int
    def __init__(self, experiment_id: _Optional[str] = ..., guest_id: _Optional[int] = ...) -> None: ...

class FreeAreaCount(_message.Message):
    __slots__ = ("order", "migratetype", "nr_free")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    MIGRATETYPE_FIELD_NUMBER: _ClassVar[int]
    NR_FREE_FIELD_NUMBER: _ClassVar[int]
    order: int
    migratetype: int
    nr_free: int
    def __init__(self, order: _Optional[int] = ..., migratetype: _Optional[int] = ..., nr_free: _Optional[int] = ...) -> None: ...

class GetGuestStateResponse(_message.Message):
    __slots__ = ("guest_id", "now_ns", "nr_pages", "free_areas", "reported_bytes", "backed_bytes", "reporting_state")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    FREE_AREAS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPORTING_STATE_FIELD_NUMBER: _ClassVar[int]
    guest_id: int
    now_ns: int
    nr_pages: int
    free_areas: _containers.RepeatedCompositeFieldContainer[FreeAreaCount]
    reported_bytes: int
    backed_bytes: int
    reporting_state: ReportingState
    def __init__(self, guest_id: _Optional[int] = ..., now_ns: _Optional[int] = ..., nr_pages: _Optional[int] = ..., free_areas: _Optional[_Iterable[_Union[FreeAreaCount, _Mapping]]] = ..., reported_bytes: _Optional[int] = ..., backed_bytes: _Optional[int] = ..., reporting_state: _Optional[_Union[ReportingState, str]] = ...) -> None: ...
