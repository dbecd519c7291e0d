from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PageRuns(_message.Message):
    __slots__ = ("starts", "npages")
    STARTS_FIELD_NUMBER: _ClassVar[int]
    NPAGES_FIELD_NUMBER: _ClassVar[int]
    starts: _containers.RepeatedScalarFieldContainer[int]
    npages: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, starts: _Optional[_Iterable[int]] = ..., npages: _Optional[_Iterable[int]] = ...) -> None: ...

class SequencedPageRuns(_message.Message):
    __slots__ = ("starts", "npages", "op_seqs")
    STARTS_FIELD_NUMBER: _ClassVar[int]
    NPAGES_FIELD_NUMBER: _ClassVar[int]
    OP_SEQS_FIELD_NUMBER: _ClassVar[int]
    starts: _containers.RepeatedScalarFieldContainer[int]
    npages: _containers.RepeatedScalarFieldContainer[int]
    op_seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, starts: _Optional[_Iterable[int]] = ..., npages: _Optional[_Iterable[int]] = ..., op_seqs: _Optional[_Iterable[int]] = ...) -> None: ...
