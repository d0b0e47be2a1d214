import Foundation

/// One metadata value of a GGUF file. The spec's twelve scalar types collapse to six cases: callers care about
/// "an integer" or "a float", not whether the writer chose u32 or i64.
public enum GGUFValue: Sendable, Equatable {
    case uint(UInt64), int(Int64), float(Double), bool(Bool), string(String), array([GGUFValue])

    public var int: Int? {
        switch self {
        case .uint(let v): return Int(exactly: v)
        case .int(let v): return Int(exactly: v)
        default: return nil
        }
    }

    public var double: Double? {
        switch self {
        case .float(let v): return v
        case .uint(let v): return Double(v)
        case .int(let v): return Double(v)
        default: return nil
        }
    }

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var array: [GGUFValue]? { if case .array(let a) = self { return a } else { return nil } }
}

/// ggml tensor types by their on-disk id. Every id whose block layout is known is listed, so a file holding a type we
/// cannot dequantize still opens (its other tensors stay usable) and the error can name the type.
public enum GGMLType: UInt32, Sendable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    public var name: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        case .iq2_xxs: return "IQ2_XXS"
        case .iq2_xs: return "IQ2_XS"
        case .iq3_xxs: return "IQ3_XXS"
        case .iq1_s: return "IQ1_S"
        case .iq4_nl: return "IQ4_NL"
        case .iq3_s: return "IQ3_S"
        case .iq2_s: return "IQ2_S"
        case .iq4_xs: return "IQ4_XS"
        case .i8: return "I8"
        case .i16: return "I16"
        case .i32: return "I32"
        case .i64: return "I64"
        case .f64: return "F64"
        case .iq1_m: return "IQ1_M"
        case .bf16: return "BF16"
        case .tq1_0: return "TQ1_0"
        case .tq2_0: return "TQ2_0"
        case .mxfp4: return "MXFP4"
        }
    }

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl, .mxfp4: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K, .iq2_xxs, .iq2_xs, .iq3_xxs, .iq1_s, .iq3_s, .iq2_s, .iq4_xs,
             .iq1_m, .tq1_0, .tq2_0: return 256
        }
    }

    /// Bytes per block (ggml's `type_size`).
    public var typeSize: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8: return 1
        case .i64, .f64: return 8
        case .q4_0: return 18           // f16 d, 16 B nibbles
        case .q4_1: return 20           // f16 d, f16 m, 16 B nibbles
        case .q5_0: return 22           // f16 d, u32 qh, 16 B nibbles
        case .q5_1: return 24           // f16 d, f16 m, u32 qh, 16 B nibbles
        case .q8_0: return 34           // f16 d, 32 × i8
        case .q8_1: return 36           // f16 d, f16 s, 32 × i8
        case .q2_K: return 84           // 16 B scales, 64 B qs, f16 d, f16 dmin
        case .q3_K: return 110          // 32 B hmask, 64 B qs, 12 B scales, f16 d
        case .q4_K: return 144          // f16 d, f16 dmin, 12 B scales, 128 B qs
        case .q5_K: return 176          // f16 d, f16 dmin, 12 B scales, 32 B qh, 128 B qs
        case .q6_K: return 210          // 128 B ql, 64 B qh, 16 × i8 scales, f16 d
        case .q8_K: return 292          // f32 d, 256 × i8, 16 × i16 bsums
        case .iq2_xxs: return 66
        case .iq2_xs: return 74
        case .iq3_xxs: return 98
        case .iq1_s: return 50
        case .iq4_nl: return 18
        case .iq3_s: return 110
        case .iq2_s: return 82
        case .iq4_xs: return 136
        case .iq1_m: return 56
        case .tq1_0: return 54
        case .tq2_0: return 66
        case .mxfp4: return 17
        }
    }
}

public struct GGUFTensorInfo: Sendable {
    public let name: String
    public let dims: [Int]          // GGUF ne, fastest-varying first (token_embd ne [576, 49152])
    public let type: GGMLType
    public let offset: Int          // absolute byte offset in the file
    public let byteCount: Int

    public var elementCount: Int { dims.reduce(1, *) }
    /// Row-major shape: `dims` reversed, e.g. token_embd [49152, 576].
    public var shape: [Int] { dims.reversed() }
}

/// A memory-mapped GGUF file (versions 2 and 3, little-endian). Parsing reads only the header, metadata and tensor
/// infos; tensor data stays in the map until `dequantize` is asked for it.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: Int
    public let metadata: [String: GGUFValue]
    public let tensors: [GGUFTensorInfo]           // file order
    /// The map itself, for code that wants the quantized bytes rather than floats.
    public let file: MappedFile
    private let index: [String: Int]

    /// ggml's GGML_MAX_DIMS; a file with more is corrupt or from a ggml we do not know.
    static let maxDims = 4
    /// Nested metadata arrays are legal but never deeper than 2 in practice; the cap keeps a hostile file from
    /// recursing us off the stack.
    static let maxArrayDepth = 16

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        var r = Reader(file: file)

        guard file.count >= 24 else { throw ModelFileError(path, "too short for a GGUF header (\(file.count) bytes, need 24)") }
        let magic = try r.u32("magic")
        guard magic == 0x4655_4747 else {   // "GGUF" read as a little-endian u32
            let shown = withUnsafeBytes(of: magic.littleEndian) { $0.map { (32...126).contains($0) ? String(UnicodeScalar($0)) : "." }.joined() }
            throw ModelFileError(path, "not a GGUF file (magic '\(shown)' = 0x\(String(magic, radix: 16)), expected 'GGUF')")
        }
        let rawVersion = try r.u32("version")
        guard rawVersion == 2 || rawVersion == 3 else {
            // Big-endian GGUFs (v3 allows them) carry the same magic bytes but a byte-swapped version.
            if rawVersion.byteSwapped == 2 || rawVersion.byteSwapped == 3 {
                throw ModelFileError(path, "big-endian GGUF (version \(rawVersion.byteSwapped)) is not supported")
            }
            throw ModelFileError(path, "unsupported GGUF version \(rawVersion) (supported: 2, 3)")
        }
        version = Int(rawVersion)
        let tensorCount = try r.u64("tensor count")
        let kvCount = try r.u64("metadata kv count")
        // Smallest possible entries: a kv is an empty key (8) + type (4) + one byte; a tensor info is an empty
        // name (8) + n_dims (4) + type (4) + offset (8). Counts beyond that are corrupt, and must not size an allocation.
        guard kvCount <= UInt64(r.remaining / 13) else {
            throw ModelFileError(path, "metadata kv count \(kvCount) cannot fit in the file (\(file.count) bytes)")
        }
        guard tensorCount <= UInt64(r.remaining / 24) else {
            throw ModelFileError(path, "tensor count \(tensorCount) cannot fit in the file (\(file.count) bytes)")
        }

        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(Int(kvCount))
        for i in 0..<Int(kvCount) {
            let key = try r.string("key of metadata entry \(i)")
            let type = try r.u32("value type of metadata '\(key)'")
            let value = try r.value(type: type, what: "metadata '\(key)'", depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw ModelFileError(path, "duplicate metadata key '\(key)'")
            }
        }
        self.metadata = metadata

        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.int, v > 0, v & (v - 1) == 0 else {
                throw ModelFileError(path, "general.alignment \(a.int.map(String.init) ?? "\(a)") is not a positive power of two")
            }
            alignment = v
        }

        struct RawInfo { let name: String, dims: [Int], type: GGMLType, offset: UInt64 }
        var raw: [RawInfo] = []
        raw.reserveCapacity(Int(tensorCount))
        for i in 0..<Int(tensorCount) {
            let name = try r.string("name of tensor info \(i)")
            let nDims = try r.u32("n_dims of tensor '\(name)'")
            guard nDims <= Self.maxDims else {
                throw ModelFileError(path, "tensor '\(name)' has \(nDims) dimensions (at most \(Self.maxDims))")
            }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let ne = try r.u64("ne[\(d)] of tensor '\(name)'")
                guard let n = Int(exactly: ne) else {
                    throw ModelFileError(path, "tensor '\(name)' has absurd dimension ne[\(d)] = \(ne)")
                }
                dims.append(n)
            }
            let typeID = try r.u32("type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: typeID) else {
                throw ModelFileError(path, "tensor '\(name)' has unknown ggml type id \(typeID)")
            }
            let offset = try r.u64("data offset of tensor '\(name)'")
            raw.append(RawInfo(name: name, dims: dims, type: type, offset: offset))
        }

        let dataStart = (r.pos + alignment - 1) / alignment * alignment
        var tensors: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        tensors.reserveCapacity(raw.count)
        for t in raw {
            var count = 1
            for n in t.dims {
                let (p, overflow) = count.multipliedReportingOverflow(by: n)
                guard !overflow, p <= file.count * 8 else {
                    throw ModelFileError(path, "tensor '\(t.name)' has an absurd element count (ne \(t.dims))")
                }
                count = p
            }
            let rowLength = t.dims.first ?? 1
            guard rowLength % t.type.blockSize == 0 else {
                throw ModelFileError(path, "tensor '\(t.name)': row length ne[0] = \(rowLength) is not a multiple of the \(t.type.name) block size \(t.type.blockSize)")
            }
            let byteCount = count / t.type.blockSize * t.type.typeSize
            guard let rel = Int(exactly: t.offset), rel <= file.count else {
                throw ModelFileError(path, "tensor '\(t.name)' data offset \(t.offset) is past the end of the file (\(file.count) bytes)")
            }
            _ = try file.bytes(dataStart + rel, byteCount, what: "data of tensor '\(t.name)' (\(t.type.name) \(t.dims))")
            guard index.updateValue(tensors.count, forKey: t.name) == nil else {
                throw ModelFileError(path, "duplicate tensor name '\(t.name)'")
            }
            tensors.append(GGUFTensorInfo(name: t.name, dims: t.dims, type: t.type, offset: dataStart + rel, byteCount: byteCount))
        }
        self.tensors = tensors
        self.index = index
    }

    public func tensor(named name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }

    public var architecture: String? { metadata["general.architecture"]?.string }

    /// The tensor as fp32 in GGUF element order (row-major over `shape`), bit-identical to gguf-py's `dequantize`.
    public func dequantize(_ info: GGUFTensorInfo) throws -> [Float] {
        let n = info.elementCount
        return try [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            if n > 0 { try dequantize(info, into: buffer.baseAddress!) }
            initialized = n
        }
    }

    /// Writes `info.elementCount` floats to `into`. Large tensors are split into chunks of whole blocks across cores.
    public func dequantize(_ info: GGUFTensorInfo, into out: UnsafeMutablePointer<Float>) throws {
        let type = info.type
        guard type.canDequantize else {
            throw ModelFileError(path, "tensor '\(info.name)': dequantization of \(type.name) (ggml type id \(type.rawValue)) is not supported")
        }
        let n = info.elementCount
        guard n % type.blockSize == 0, info.byteCount == n / type.blockSize * type.typeSize else {
            throw ModelFileError(path, "tensor '\(info.name)': \(info.byteCount) bytes do not hold \(n) \(type.name) elements")
        }
        let src = try file.bytes(info.offset, info.byteCount, what: "data of tensor '\(info.name)'")
        guard n > 0, let base = src.baseAddress else { return }
        let blocks = n / type.blockSize
        // ~64 Ki elements per chunk: big enough that dispatch overhead vanishes, small enough to balance two cores.
        let minBlocks = max(1, 65_536 / type.blockSize)
        let chunks = min((blocks + minBlocks - 1) / minBlocks, ProcessInfo.processInfo.activeProcessorCount * 4)
        if chunks <= 1 {
            dequantizeBlocks(type, base, out, 0..<blocks)
            return
        }
        // Pointers are not Sendable; the chunks write disjoint ranges, so passing them as addresses is safe.
        let srcAddress = UInt(bitPattern: base), outAddress = UInt(bitPattern: out)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = blocks * c / chunks, hi = blocks * (c + 1) / chunks
            dequantizeBlocks(type, UnsafeRawPointer(bitPattern: srcAddress)!,
                             UnsafeMutablePointer<Float>(bitPattern: outAddress)!, lo..<hi)
        }
    }
}

/// Bounds-checked little-endian cursor over the header; every read names what it was reading, so a truncated or
/// corrupt file reports e.g. "string length of metadata 'tokenizer.ggml.tokens'[17]" rather than crashing.
private struct Reader {
    let file: MappedFile
    var pos = 0

    var remaining: Int { file.count - pos }

    mutating func fixed<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        _ = try file.bytes(pos, MemoryLayout<T>.size, what: what())
        defer { pos += MemoryLayout<T>.size }
        return file.load(T.self, at: pos)
    }

    mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 { try fixed(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 { try fixed(UInt64.self, what()) }

    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let length = try u64("string length of \(what())")
        guard let n = Int(exactly: length), n <= remaining else {
            throw ModelFileError(file.path, "\(what()): string length \(length) at byte \(pos - 8) runs past the end of the file (\(file.count) bytes)")
        }
        let bytes = try file.bytes(pos, n, what: "string of \(what())")
        pos += n
        // The spec says UTF-8; invalid sequences (rare, in some vocabularies) become U+FFFD rather than failing the load.
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Smallest encoding of one value of `type`, to reject array counts the rest of the file cannot hold.
    static func minSize(_ type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        case 9: return 12
        default: return nil
        }
    }

    mutating func value(type: UInt32, what: @autoclosure () -> String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint(UInt64(try fixed(UInt8.self, what())))
        case 1: return .int(Int64(try fixed(Int8.self, what())))
        case 2: return .uint(UInt64(try fixed(UInt16.self, what())))
        case 3: return .int(Int64(try fixed(Int16.self, what())))
        case 4: return .uint(UInt64(try fixed(UInt32.self, what())))
        case 5: return .int(Int64(try fixed(Int32.self, what())))
        case 6: return .float(Double(Float(bitPattern: try fixed(UInt32.self, what()))))
        case 7:
            let b = try fixed(UInt8.self, what())
            guard b <= 1 else { throw ModelFileError(file.path, "\(what()): bool byte is \(b), not 0 or 1") }
            return .bool(b == 1)
        case 8: return .string(try string(what()))
        case 9:
            guard depth < GGUFFile.maxArrayDepth else {
                throw ModelFileError(file.path, "\(what()): arrays nested deeper than \(GGUFFile.maxArrayDepth)")
            }
            let elementType = try u32("array element type of \(what())")
            guard let size = Self.minSize(elementType) else {
                throw ModelFileError(file.path, "\(what()): unknown array element type \(elementType)")
            }
            let count = try u64("array length of \(what())")
            guard count <= UInt64(remaining / size) else {
                throw ModelFileError(file.path, "\(what()): array of \(count) elements (type \(elementType)) cannot fit in the \(remaining) bytes left of the file")
            }
            var elements: [GGUFValue] = []
            elements.reserveCapacity(Int(count))
            for i in 0..<Int(count) {
                elements.append(try value(type: elementType, what: "\(what())[\(i)]", depth: depth + 1))
            }
            return .array(elements)
        case 10: return .uint(try fixed(UInt64.self, what()))
        case 11: return .int(try fixed(Int64.self, what()))
        case 12: return .float(Double(bitPattern: try fixed(UInt64.self, what())))
        default: throw ModelFileError(file.path, "\(what()): unknown value type \(type)")
        }
    }
}
