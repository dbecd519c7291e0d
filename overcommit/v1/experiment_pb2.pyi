from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_CREATED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_FINISHED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_CANCELLED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_INTERRUPTED: _ClassVar[ExperimentState]
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_STATE_CREATED: ExperimentState
EXPERIMENT_STATE_FINISHED: ExperimentState
EXPERIMENT_STATE_CANCELLED: ExperimentState
EXPERIMENT_STATE_INTERRUPTED: ExperimentState

class CreateExperimentRequest(_message.Message):
    __slots__ = ("spec_yaml", "spec_struct")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    SPEC_STRUCT_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    spec_struct: _struct_pb2.Struct
    def __init__(self, spec_yaml: _Optional[str] = ..., spec_struct: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateExperimentResponse(_message.Message):
    __slots__ = ("experiment_id", "token")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    token: str
    def __init__(self, experiment_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class AdvanceRequest(_message.Message):
    __slots__ = ("experiment_id", "duration_ns")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    duration_ns: int
    def __init__(self, experiment_id: _Optional[str] = ..., duration_ns: _Optional[int] = ...) -> None: ...

class AdvanceResponse(_message.Message):
    __slots__ = ("now_ns", "state")
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    now_ns: int
    state: ExperimentState
    def __init__(self, now_ns: _Optional[int] = ..., state: _Optional[_Union[ExperimentState, str]] = ...) -> None: ...

class RunToEndRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class RunToEndResponse(_message.Message):
    __slots__ = ("now_ns", "state")
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    now_ns: int
    state: ExperimentState
    def __init__(self, now_ns: _Optional[int] = ..., state: _Optional[_Union[ExperimentState, str]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ExperimentState
    def __init__(self, state: _Optional[_Union[ExperimentState, str]] = ...) -> None: ...

class GetSummaryRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class GetSummaryResponse(_message.Message):
    __slots__ = ("summary_json", "summary")
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    summary_json: str
    summary: _struct_pb2.Struct
    def __init__(self, summary_json: _Optional[str] = ..., summary: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StreamSamplesRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class StreamSamplesResponse(_message.Message):
    __slots__ = ("sim_time_ns", "entity", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SIM_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    sim_time_ns: int
    entity: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, sim_time_ns: _Optional[int] = ..., entity: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExperimentInfo(_message.Message):
    __slots__ = ("experiment_id", "name", "state", "now_ns")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    name: str
    state: ExperimentState
    now_ns: int
    def __init__(self, experiment_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., now_ns: _Optional[int] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentInfo]
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentInfo, _Mapping]]] = ...) -> None: ...

class ResumeExperimentRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class ResumeExperimentResponse(_message.Message):
    __slots__ = ("now_ns", "state", "token")
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    now_ns: int
    state: ExperimentState
    token: str
    def __init__(self, now_ns: _Optional[int] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., token: _Optional[str] = ...) -> None: ...
