from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]

class ReconstructionFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECONSTRUCTION_FORMAT_UINT8: _ClassVar[ReconstructionFormat]
    RECONSTRUCTION_FORMAT_FLOAT32: _ClassVar[ReconstructionFormat]
    RECONSTRUCTION_FORMAT_NONE: _ClassVar[ReconstructionFormat]
DTYPE_UNSPECIFIED: DType
DTYPE_UINT8: DType
DTYPE_UINT16: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType
RECONSTRUCTION_FORMAT_UINT8: ReconstructionFormat
RECONSTRUCTION_FORMAT_FLOAT32: ReconstructionFormat
RECONSTRUCTION_FORMAT_NONE: ReconstructionFormat

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CodeBatch(_message.Message):
    __slots__ = ("bundle_id", "count", "format", "data", "sizes")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    count: int
    format: str
    data: bytes
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, bundle_id: _Optional[str] = ..., count: _Optional[int] = ..., format: _Optional[str] = ..., data: _Optional[bytes] = ..., sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("codes", "originals", "reconstruction_format")
    CODES_FIELD_NUMBER: _ClassVar[int]
    ORIGINALS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FORMAT_FIELD_NUMBER: _ClassVar[int]
    codes: CodeBatch
    originals: Tensor
    reconstruction_format: ReconstructionFormat
    def __init__(self, codes: _Optional[_Union[CodeBatch, _Mapping]] = ..., originals: _Optional[_Union[Tensor, _Mapping]] = ..., reconstruction_format: _Optional[_Union[ReconstructionFormat, str]] = ...) -> None: ...

class Quality(_message.Message):
    __slots__ = ("mse", "psnr", "batch_mse", "batch_psnr")
    MSE_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    BATCH_MSE_FIELD_NUMBER: _ClassVar[int]
    BATCH_PSNR_FIELD_NUMBER: _ClassVar[int]
    mse: _containers.RepeatedScalarFieldContainer[float]
    psnr: _containers.RepeatedScalarFieldContainer[float]
    batch_mse: float
    batch_psnr: float
    def __init__(self, mse: _Optional[_Iterable[float]] = ..., psnr: _Optional[_Iterable[float]] = ..., batch_mse: _Optional[float] = ..., batch_psnr: _Optional[float] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("bundle_id", "count", "reconstructions", "quality")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    count: int
    reconstructions: Tensor
    quality: Quality
    def __init__(self, bundle_id: _Optional[str] = ..., count: _Optional[int] = ..., reconstructions: _Optional[_Union[Tensor, _Mapping]] = ..., quality: _Optional[_Union[Quality, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BundleInfo(_message.Message):
    __slots__ = ("bundle_id", "manifest_json", "name", "version", "audit")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    manifest_json: str
    name: str
    version: int
    audit: AuditFigures
    def __init__(self, bundle_id: _Optional[str] = ..., manifest_json: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., audit: _Optional[_Union[AuditFigures, _Mapping]] = ...) -> None: ...

class AuditFigures(_message.Message):
    __slots__ = ("items", "mean_mse", "psnr", "recent_psnr")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MSE_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    RECENT_PSNR_FIELD_NUMBER: _ClassVar[int]
    items: int
    mean_mse: float
    psnr: float
    recent_psnr: float
    def __init__(self, items: _Optional[int] = ..., mean_mse: _Optional[float] = ..., psnr: _Optional[float] = ..., recent_psnr: _Optional[float] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleInfo]
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleInfo, _Mapping]]] = ...) -> None: ...

class IngestItem(_message.Message):
    __slots__ = ("item_id", "bundle_id", "payload", "captured_at_ms", "item_seq", "original", "name")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ITEM_SEQ_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    bundle_id: str
    payload: bytes
    captured_at_ms: int
    item_seq: int
    original: Tensor
    name: str
    def __init__(self, item_id: _Optional[str] = ..., bundle_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., captured_at_ms: _Optional[int] = ..., item_seq: _Optional[int] = ..., original: _Optional[_Union[Tensor, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("device_id", "items", "bundle_id", "item_id_prefix", "captured_base_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_BASE_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    items: _containers.RepeatedCompositeFieldContainer[IngestItem]
    bundle_id: str
    item_id_prefix: str
    captured_base_ms: int
    def __init__(self, device_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[IngestItem, _Mapping]]] = ..., bundle_id: _Optional[str] = ..., item_id_prefix: _Optional[str] = ..., captured_base_ms: _Optional[int] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("item_ids", "duplicates", "item_seqs")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    ITEM_SEQS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    duplicates: int
    item_seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., duplicates: _Optional[int] = ..., item_seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("item_ids", "device_id", "since_ms", "until_ms", "codes_only", "reconstruction_format", "limit")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    CODES_ONLY_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    device_id: str
    since_ms: int
    until_ms: int
    codes_only: bool
    reconstruction_format: ReconstructionFormat
    limit: int
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., device_id: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., codes_only: _Optional[bool] = ..., reconstruction_format: _Optional[_Union[ReconstructionFormat, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class StoredItem(_message.Message):
    __slots__ = ("item_id", "device_id", "bundle_id", "captured_at_ms", "stored_at_ms", "payload", "reconstruction", "error", "audit_mse", "name")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AUDIT_MSE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    device_id: str
    bundle_id: str
    captured_at_ms: int
    stored_at_ms: int
    payload: bytes
    reconstruction: Tensor
    error: str
    audit_mse: float
    name: str
    def __init__(self, item_id: _Optional[str] = ..., device_id: _Optional[str] = ..., bundle_id: _Optional[str] = ..., captured_at_ms: _Optional[int] = ..., stored_at_ms: _Optional[int] = ..., payload: _Optional[bytes] = ..., reconstruction: _Optional[_Union[Tensor, _Mapping]] = ..., error: _Optional[str] = ..., audit_mse: _Optional[float] = ..., name: _Optional[str] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("items", "missing_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StoredItem]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[StoredItem, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListStoredRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class StoredSummary(_message.Message):
    __slots__ = ("device_id", "bundle_id", "items", "payload_bytes", "bundle_available")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    bundle_id: str
    items: int
    payload_bytes: int
    bundle_available: bool
    def __init__(self, device_id: _Optional[str] = ..., bundle_id: _Optional[str] = ..., items: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., bundle_available: _Optional[bool] = ...) -> None: ...

class ListStoredResponse(_message.Message):
    __slots__ = ("summaries", "total_items", "total_payload_bytes")
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    summaries: _containers.RepeatedCompositeFieldContainer[StoredSummary]
    total_items: int
    total_payload_bytes: int
    def __init__(self, summaries: _Optional[_Iterable[_Union[StoredSummary, _Mapping]]] = ..., total_items: _Optional[int] = ..., total_payload_bytes: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("bundle_id", "payload", "code", "device_ids", "limit")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    payload: bytes
    code: bytes
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, bundle_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., code: _Optional[bytes] = ..., device_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("item", "distance")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    item: StoredItem
    distance: int
    def __init__(self, item: _Optional[_Union[StoredItem, _Mapping]] = ..., distance: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "searched", "code_bits")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SEARCHED_FIELD_NUMBER: _ClassVar[int]
    CODE_BITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    searched: int
    code_bits: int
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., searched: _Optional[int] = ..., code_bits: _Optional[int] = ...) -> None: ...
