import Foundation

/// One tensor entry of a safetensors header.
public struct SafeTensorInfo: Sendable {
    public let name: String
    public let dtype: String
    public let shape: [Int]
    public let offset: Int      // absolute byte offset in the file
    public let byteCount: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A memory-mapped safetensors file: u64 LE header length N, N bytes of JSON, then raw little-endian data.
public final class SafeTensorsFile: @unchecked Sendable {
    public let file: MappedFile
    public let tensors: [String: SafeTensorInfo]
    public let metadata: [String: String]
    public var path: String { file.path }

    static let elementSize = ["F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1]

    public init(path: String) throws {
        file = try MappedFile(path: path)
        guard file.count >= 8 else { throw ModelFileError(path, "too short for a safetensors header (\(file.count) bytes)") }
        let n = Int(clamping: file.load(UInt64.self, at: 0))
        let headerBytes = try file.bytes(8, n, what: "safetensors header of \(n) bytes")
        guard let json = try? JSONSerialization.jsonObject(with: Data(headerBytes)) as? [String: Any] else {
            throw ModelFileError(path, "safetensors header is not a JSON object")
        }
        let dataStart = 8 + n
        var tensors: [String: SafeTensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in json {
            if name == "__metadata__" {
                for (k, v) in value as? [String: Any] ?? [:] { metadata[k] = v as? String ?? "\(v)" }
                continue
            }
            guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw ModelFileError(path, "tensor '\(name)' has a malformed header entry") }
            guard let size = Self.elementSize[dtype] else {
                throw ModelFileError(path, "tensor '\(name)' has unsupported dtype \(dtype)")
            }
            guard shape.allSatisfy({ $0 >= 0 }), offsets[0] >= 0, offsets[1] >= offsets[0] else {
                throw ModelFileError(path, "tensor '\(name)' has a negative shape or offset")
            }
            let count = shape.reduce(1, *)
            guard offsets[1] - offsets[0] == count * size else {
                throw ModelFileError(path, "tensor '\(name)': \(dtype) \(shape) needs \(count * size) bytes but its offsets span \(offsets[1] - offsets[0])")
            }
            _ = try file.bytes(dataStart + offsets[0], offsets[1] - offsets[0], what: "tensor '\(name)'")
            tensors[name] = SafeTensorInfo(name: name, dtype: dtype, shape: shape, offset: dataStart + offsets[0],
                                           byteCount: offsets[1] - offsets[0])
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    func info(_ name: String) throws -> SafeTensorInfo {
        guard let t = tensors[name] else { throw ModelFileError(path, "has no tensor '\(name)'") }
        return t
    }

    /// The tensor converted to Float32 (from F32, F16, BF16 or F64).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        let p = file.base + t.offset
        let n = t.elementCount
        switch t.dtype {
        case "F32":
            return [Float](unsafeUninitializedCapacity: n) { b, c in
                UnsafeMutableRawBufferPointer(b).copyMemory(from: UnsafeRawBufferPointer(start: p, count: n * 4)); c = n
            }
        case "F16":
            return (0..<n).map { Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }
        case "BF16":
            return (0..<n).map { Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) << 16) }
        case "F64":
            return (0..<n).map { Float(p.loadUnaligned(fromByteOffset: 8 * $0, as: Double.self)) }
        default:
            throw ModelFileError(path, "tensor '\(name)' is \(t.dtype), not a floating-point tensor")
        }
    }

    public func doubles(_ name: String) throws -> [Double] {
        let t = try info(name)
        if t.dtype == "F64" {
            return (0..<t.elementCount).map { (file.base + t.offset).loadUnaligned(fromByteOffset: 8 * $0, as: Double.self) }
        }
        return try floats(name).map(Double.init)
    }

    /// Integer tensors (I64, I32, U8) as Int.
    public func ints(_ name: String) throws -> [Int] {
        let t = try info(name)
        let p = file.base + t.offset
        switch t.dtype {
        case "I64": return (0..<t.elementCount).map { Int(p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
        case "I32": return (0..<t.elementCount).map { Int(p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        case "U8", "BOOL": return (0..<t.elementCount).map { Int(p.load(fromByteOffset: $0, as: UInt8.self)) }
        default: throw ModelFileError(path, "tensor '\(name)' is \(t.dtype), not an integer tensor")
        }
    }
}

/// The weights of an HF folder: one `model.safetensors`, or shards listed by `model.safetensors.index.json`.
public struct SafeTensorsCheckpoint: Sendable {
    public let files: [SafeTensorsFile]
    let location: [String: Int]     // tensor name → index into files

    public init(folder: String) throws {
        let fm = FileManager.default
        let single = folder + "/model.safetensors"
        let index = folder + "/model.safetensors.index.json"
        if fm.fileExists(atPath: index) {
            guard let data = fm.contents(atPath: index),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let map = json["weight_map"] as? [String: String]
            else { throw ModelFileError(index, "not a valid index (expected a JSON object with a \"weight_map\")") }
            let shardNames = Array(Set(map.values)).sorted()
            files = try shardNames.map { try SafeTensorsFile(path: folder + "/" + $0) }
            var location: [String: Int] = [:]
            for (name, shard) in map {
                let i = shardNames.firstIndex(of: shard)!
                guard files[i].tensors[name] != nil else {
                    throw ModelFileError(files[i].path, "index lists tensor '\(name)' here but the shard does not contain it")
                }
                location[name] = i
            }
            self.location = location
        } else if fm.fileExists(atPath: single) {
            files = [try SafeTensorsFile(path: single)]
            location = Dictionary(uniqueKeysWithValues: files[0].tensors.keys.map { ($0, 0) })
        } else {
            throw ModelFileError(folder, "no model.safetensors or model.safetensors.index.json")
        }
    }

    /// Files already open (e.g. one safetensors file that is not a model folder).
    public init(files: [SafeTensorsFile]) throws {
        self.files = files
        var location: [String: Int] = [:]
        for (i, f) in files.enumerated() {
            for name in f.tensors.keys {
                guard location[name] == nil else { throw ModelFileError(f.path, "tensor '\(name)' appears in two files") }
                location[name] = i
            }
        }
        self.location = location
    }

    public var tensorNames: [String] { location.keys.sorted() }

    public func info(_ name: String) -> SafeTensorInfo? { location[name].flatMap { files[$0].tensors[name] } }

    public func floats(_ name: String) throws -> [Float] {
        guard let i = location[name] else { throw ModelFileError(files.first?.path ?? "checkpoint", "has no tensor '\(name)'") }
        return try files[i].floats(name)
    }
}
