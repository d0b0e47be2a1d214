import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a GGUF v3 file (little-endian, the layout of ggml's docs/gguf.md) that llama.cpp and `GGUFFile` load.
///
/// Metadata keeps its on-disk type: llama.cpp reads e.g. `tokenizer.ggml.bos_token_id` only as u32 and
/// `general.alignment` only as u32, so unlike `GGUFValue` the cases here are the exact GGUF types.
/// Tensor data is asked for one tensor at a time while writing, so memory stays bounded by the largest tensor.
public struct GGUFWriter {
    public enum Value: Sendable, Equatable {
        case u32(UInt32), i32(Int32), u64(UInt64), f32(Float), bool(Bool), string(String)
        case strings([String]), i32s([Int32]), f32s([Float])
    }

    private struct Tensor {
        let name: String
        let type: GGMLType
        let dims: [Int]
        let bytes: () throws -> [UInt8]
    }

    /// Keys in insertion order (the order they are written in).
    public private(set) var metadata: [(key: String, value: Value)] = []
    private var tensors: [Tensor] = []

    /// llama.cpp's default, and what it assumes when `general.alignment` is absent.
    public static let defaultAlignment: UInt32 = 32
    /// ggml's GGML_MAX_DIMS and GGML_MAX_NAME (which counts the terminating NUL).
    static let maxDims = 4
    static let maxNameBytes = 63

    public init() {}

    public subscript(key: String) -> Value? { metadata.first { $0.key == key }?.value }

    /// Sets `key`; a key set twice keeps its first position and takes the new value (GGUF forbids duplicate keys).
    public mutating func set(_ key: String, _ value: Value) {
        if let i = metadata.firstIndex(where: { $0.key == key }) {
            metadata[i].value = value
        } else {
            metadata.append((key, value))
        }
    }

    public mutating func set(_ entries: [(String, Value)]) {
        for (key, value) in entries { set(key, value) }
    }

    /// Adds a tensor. `dims` are GGUF `ne`, fastest-varying first (an [out, in] row-major matrix is [in, out]);
    /// `bytes` is called once, during `write`, and must return exactly the tensor's size in `type`'s encoding.
    public mutating func add(tensor name: String, type: GGMLType, dims: [Int], bytes: @escaping () throws -> [UInt8]) {
        tensors.append(Tensor(name: name, type: type, dims: dims, bytes: bytes))
    }

    /// Writes the file to a temporary name next to `path` and renames it into place at the end, so `path` holds
    /// either what it held before or the whole new file; on any error the temporary file is removed. Errors from
    /// a tensor's `bytes` closure are passed through unchanged.
    public func write(to path: String) throws {
        // Everything that can be checked without the tensor data is, before a file is created.
        var entries = metadata
        let alignment: Int
        if let a = self["general.alignment"] {
            guard case .u32(let v) = a, v > 0, v & (v - 1) == 0 else {
                throw ModelFileError(path, "general.alignment \(a) is not a u32 power of two")
            }
            alignment = Int(v)
        } else {
            alignment = Int(Self.defaultAlignment)
            entries.append(("general.alignment", .u32(Self.defaultAlignment)))
        }

        var header = Encoder()
        header.u32(0x4655_4747)   // "GGUF" as a little-endian u32
        header.u32(3)
        header.u64(UInt64(tensors.count))
        header.u64(UInt64(entries.count))
        for (key, value) in entries {
            header.string(key)
            header.value(value)
        }

        var sizes: [Int] = []
        var names: Set<String> = []
        var offset = 0   // relative to the start of the data section
        for t in tensors {
            let size = try Self.byteCount(t, file: path)
            guard names.insert(t.name).inserted else { throw ModelFileError(path, "duplicate tensor name '\(t.name)'") }
            header.string(t.name)
            header.u32(UInt32(t.dims.count))
            for n in t.dims { header.u64(UInt64(n)) }
            header.u32(t.type.rawValue)
            header.u64(UInt64(offset))
            sizes.append(size)
            offset += Self.padded(size, alignment)
        }

        let url = URL(fileURLWithPath: path)
        let temp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        guard let file = fopen(temp, "wx") else {
            throw ModelFileError(path, "cannot create temporary file \(temp) (\(String(cString: strerror(errno))))")
        }
        var isOpen = true
        do {
            func put(_ bytes: UnsafeRawBufferPointer) throws {
                guard let base = bytes.baseAddress, bytes.count > 0 else { return }
                guard fwrite(base, 1, bytes.count, file) == bytes.count else {
                    throw ModelFileError(path, "cannot write \(temp) (\(String(cString: strerror(errno))))")
                }
            }
            let zeros = [UInt8](repeating: 0, count: alignment)
            /// Zeros from the end of `count` bytes up to the next multiple of the alignment.
            func pad(_ count: Int) throws {
                let n = Self.padded(count, alignment) - count
                try zeros.withUnsafeBytes { try put(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }

            try header.bytes.withUnsafeBytes(put)
            // With no tensors there is no data section, so nothing to align.
            if !tensors.isEmpty { try pad(header.bytes.count) }
            for (t, size) in zip(tensors, sizes) {
                let bytes = try t.bytes()
                guard bytes.count == size else {
                    throw ModelFileError(path, "tensor '\(t.name)' (\(t.type.name) \(t.dims)): its data is \(bytes.count) bytes, "
                                         + "expected \(size)")
                }
                try bytes.withUnsafeBytes(put)
                try pad(size)
            }

            // Flushed and synced before the rename, so a crash cannot leave a renamed but partly written file.
            guard fflush(file) == 0, fsync(fileno(file)) == 0 else {
                throw ModelFileError(path, "cannot write \(temp) (\(String(cString: strerror(errno))))")
            }
            isOpen = false
            guard fclose(file) == 0 else {
                throw ModelFileError(path, "cannot close \(temp) (\(String(cString: strerror(errno))))")
            }
            guard rename(temp, path) == 0 else {
                throw ModelFileError(path, "cannot rename \(temp) to it (\(String(cString: strerror(errno))))")
            }
        } catch {
            if isOpen { fclose(file) }
            unlink(temp)
            throw error
        }
    }

    /// The tensor's size in bytes, after the checks llama.cpp's loader makes on a tensor info.
    private static func byteCount(_ t: Tensor, file: String) throws -> Int {
        let what = "tensor '\(t.name)' (\(t.type.name) \(t.dims))"
        guard !t.name.isEmpty, t.name.utf8.count <= maxNameBytes else {
            throw ModelFileError(file, "\(what): name must be 1 to \(maxNameBytes) bytes")
        }
        guard (1...maxDims).contains(t.dims.count) else {
            throw ModelFileError(file, "\(what): has \(t.dims.count) dimensions (1 to \(maxDims) allowed)")
        }
        var count = 1
        for n in t.dims {
            let (p, overflow) = count.multipliedReportingOverflow(by: n)
            guard n > 0, !overflow else {
                throw ModelFileError(file, "\(what): dimensions must be positive and their product fit in Int")
            }
            count = p
        }
        guard t.dims[0] % t.type.blockSize == 0 else {
            throw ModelFileError(file, "\(what): ne[0] = \(t.dims[0]) is not a multiple of the \(t.type.name) block size "
                                 + "\(t.type.blockSize)")
        }
        return count / t.type.blockSize * t.type.typeSize
    }

    private static func padded(_ n: Int, _ alignment: Int) -> Int { (n + alignment - 1) / alignment * alignment }
}

/// Little-endian header bytes in GGUF's encoding.
private struct Encoder {
    var bytes: [UInt8] = []

    mutating func integer<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { integer(v) }
    mutating func u64(_ v: UInt64) { integer(v) }

    /// u64 byte length, then the UTF-8 bytes (no terminator).
    mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes += s.utf8
    }

    // GGUF value type ids.
    static let uint32: UInt32 = 4, int32: UInt32 = 5, float32: UInt32 = 6, bool: UInt32 = 7, string: UInt32 = 8
    static let array: UInt32 = 9, uint64: UInt32 = 10

    /// Type id, then the value; an array is its element type, u64 count and the elements.
    mutating func value(_ v: GGUFWriter.Value) {
        switch v {
        case .u32(let x): u32(Self.uint32); u32(x)
        case .i32(let x): u32(Self.int32); integer(x)
        case .u64(let x): u32(Self.uint64); u64(x)
        case .f32(let x): u32(Self.float32); u32(x.bitPattern)
        case .bool(let x): u32(Self.bool); bytes.append(x ? 1 : 0)
        case .string(let x): u32(Self.string); string(x)
        case .strings(let xs):
            arrayHeader(Self.string, xs.count)
            for x in xs { string(x) }
        case .i32s(let xs):
            arrayHeader(Self.int32, xs.count)
            for x in xs { integer(x) }
        case .f32s(let xs):
            arrayHeader(Self.float32, xs.count)
            for x in xs { u32(x.bitPattern) }
        }
    }

    private mutating func arrayHeader(_ elementType: UInt32, _ count: Int) {
        u32(Self.array)
        u32(elementType)
        u64(UInt64(count))
    }
}
