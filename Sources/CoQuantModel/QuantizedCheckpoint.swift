import Foundation

// The quantized model folder CoQuant writes (`quant_method: "coquant"`; its `quantization_config` is typed in
// QuantizationConfig.swift):
//   config.json            the HF config plus `quantization_config` (weights, activations, KV cache, rotations)
//   model.safetensors      per quantized linear `<name>.qweight` U8, `<name>.scales` F32 [R, G], `<name>.zeros` F32
//                          [R, G] (zero point in code units), `<name>.g_idx` I32 [C] when groups are not
//                          c / group_size, and `<name>.group_bits` I32 [G] when groups have their own bit widths
//                          (ResQ/CoQuant: the low block at 4 bits, the high one at 8; bits_c = group_bits[g_idx[c]],
//                          else storage_bits). `.qweight` is
//                            v2 (`coquant-packed-v2`): the runtime's 4-bit plane runs (PlaneLayout.swift), and the
//                               embeddings / LM head (`quantization_config.embeddings.format`) as
//                               int8-row: `<name>.codes` I8 [V, d] + `<name>.row_scales` F32 [V] (Int8Rows),
//                               int4-g32: `<name>.qweight/.scales/.zeros`, 4-bit plane runs of 32 columns,
//                               f16: `<name>.weight` F16 [V, d] (F16Rows), or f32;
//                            v1 (`coquant-packed-v1`): [R, ⌈Σ_c bits_c / 8⌉], codes bit-packed little-endian row by
//                               row (PackedLinear below, which is also the in-memory form of a run's result), fp32
//                               embeddings and head;
//                          everything else F32
//   tokenizer.json, tokenizer_config.json, report.json, report.md
// Ŵ[r, c] = scales[r, g] · (code[r, c] − zeros[r, g]) with g = g_idx[c] (or c / group_size, or 0 per channel).

/// One linear's integer codes and grid.
public struct PackedLinear: Sendable {
    /// The widest code (the container width when every group has it).
    public let bits: Int
    public let rows: Int
    public let cols: Int
    public let packed: [UInt8]         // [rows, rowBytes]
    public let scales: [Float]         // [rows, groups]
    public let zeros: [Float]          // [rows, groups]
    public let groupIndex: [Int32]     // [cols]: the group of each input column
    /// Mixed precision: the code width of each group; nil when every column has `bits`.
    public let groupBits: [Int]?
    /// Bit offset of each column's code within a row, [cols + 1] (the last is the row's width in bits).
    let columnOffsets: [Int]

    public var groups: Int { scales.count / rows }
    public var rowBytes: Int { (columnOffsets[cols] + 7) / 8 }

    static func offsets(cols: Int, bits: Int, groupIndex: [Int32], groupBits: [Int]?) -> [Int] {
        var offsets = [0]
        offsets.reserveCapacity(cols + 1)
        for c in 0..<cols { offsets.append(offsets[c] + (groupBits?[Int(groupIndex[c])] ?? bits)) }
        return offsets
    }

    public init(bits: Int, rows: Int, cols: Int, codes: [Int32], scales: [Float], zeros: [Float], groupIndex: [Int32],
                groupBits: [Int]? = nil) {
        precondition(bits >= 1 && bits <= 8 && codes.count == rows * cols && groupIndex.count == cols)
        precondition(scales.count == zeros.count && scales.count % rows == 0)
        precondition(groupBits.map { $0.count == scales.count / rows && $0.allSatisfy { (1...bits).contains($0) } } ?? true)
        let offsets = Self.offsets(cols: cols, bits: bits, groupIndex: groupIndex, groupBits: groupBits)
        let rowBytes = (offsets[cols] + 7) / 8
        var packed = [UInt8](repeating: 0, count: rows * rowBytes)
        for r in 0..<rows {
            for c in 0..<cols {
                var bit = offsets[c], width = offsets[c + 1] - offsets[c]
                var value = UInt32(codes[r * cols + c]) & ((1 << width) - 1)
                while width > 0 {
                    let byte = r * rowBytes + bit / 8, shift = bit % 8, take = min(width, 8 - shift)
                    packed[byte] |= UInt8((value & ((1 << take) - 1)) << shift)
                    value >>= take; width -= take; bit += take
                }
            }
        }
        self.init(bits: bits, rows: rows, cols: cols, packed: packed, scales: scales, zeros: zeros,
                  groupIndex: groupIndex, groupBits: groupBits, columnOffsets: offsets)
    }

    init(bits: Int, rows: Int, cols: Int, packed: [UInt8], scales: [Float], zeros: [Float], groupIndex: [Int32],
         groupBits: [Int]?, columnOffsets: [Int]) {
        self.bits = bits
        self.rows = rows
        self.cols = cols
        self.packed = packed
        self.scales = scales
        self.zeros = zeros
        self.groupIndex = groupIndex
        self.groupBits = groupBits
        self.columnOffsets = columnOffsets
    }

    public func code(_ r: Int, _ c: Int) -> Int32 {
        var bit = columnOffsets[c], got = 0, value: UInt32 = 0
        let width = columnOffsets[c + 1] - bit, rowBytes = self.rowBytes
        while got < width {
            let byte = UInt32(packed[r * rowBytes + bit / 8]), shift = bit % 8, take = min(width - got, 8 - shift)
            value |= ((byte >> shift) & ((1 << take) - 1)) << got
            got += take; bit += take
        }
        return Int32(value)
    }

    public var codes: [Int32] { (0..<(rows * cols)).map { code($0 / cols, $0 % cols) } }

    /// Ŵ [rows, cols] in float32. The in-memory quantized model uses exactly these values, so a saved folder
    /// evaluates to the same numbers as the run that wrote it.
    public func dequantized() -> [Float] {
        let g = groups
        var w = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for c in 0..<cols {
                let k = r * g + Int(groupIndex[c])
                w[r * cols + c] = scales[k] * (Float(code(r, c)) - zeros[k])
            }
        }
        return w
    }
}

/// Collects tensors and writes one safetensors file.
public struct SafeTensorsWriter {
    var entries: [(name: String, dtype: String, shape: [Int], data: Data)] = []
    public var metadata: [String: String] = [:]

    public init() {}

    /// (name, dtype, shape) of the tensors added so far, in order.
    public var tensors: [(name: String, dtype: String, shape: [Int])] { entries.map { ($0.name, $0.dtype, $0.shape) } }

    public mutating func add(_ name: String, _ values: [Float], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *))
        entries.append((name, "F32", shape, values.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    public mutating func add(_ name: String, _ values: [Double], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *))
        entries.append((name, "F64", shape, values.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    public mutating func add(_ name: String, _ values: [Int32], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *))
        entries.append((name, "I32", shape, values.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    /// Unsigned 32-bit words (MLX's packed codes).
    public mutating func add(_ name: String, words: [UInt32], shape: [Int]) {
        precondition(words.count == shape.reduce(1, *))
        entries.append((name, "U32", shape, words.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    /// IEEE half precision (values already rounded to it convert exactly).
    public mutating func add(_ name: String, f16 values: [Float], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *))
        let half = values.map { Float16($0).bitPattern }
        entries.append((name, "F16", shape, half.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    /// Raw one-byte elements: `U8` codes, or `I8` (pass the bit patterns).
    public mutating func add(_ name: String, bytes: [UInt8], shape: [Int], dtype: String = "U8") {
        precondition(bytes.count == shape.reduce(1, *))
        entries.append((name, dtype, shape, Data(bytes)))
    }

    public func write(to path: String) throws {
        var header: [String: Any] = [:]
        var offset = 0
        for e in entries {
            header[e.name] = ["dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.data.count]]
            offset += e.data.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }    // align the data to 8 bytes, as the format recommends
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for e in entries { out.append(e.data) }
        try out.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

/// Writes a whole folder under a temporary name and renames it into place, so an interrupted or failed run
/// leaves no half-written model. `fill(tmpDir)` writes the files.
public func writeFolderAtomically(_ folder: String, overwrite: Bool, fill: (String) throws -> Void) throws {
    let fm = FileManager.default
    if fm.fileExists(atPath: folder) && !overwrite {
        throw ModelFileError(folder, "already exists (pass --overwrite to replace it)")
    }
    let tmp = folder + ".tmp-\(getpid())"
    try? fm.removeItem(atPath: tmp)
    try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    do {
        try fill(tmp)
        if fm.fileExists(atPath: folder) { try fm.removeItem(atPath: folder) }
        try fm.moveItem(atPath: tmp, toPath: folder)
    } catch {
        try? fm.removeItem(atPath: tmp)
        throw error
    }
}

extension SafeTensorsCheckpoint {
    /// `<prefix>.scales/.zeros[/.g_idx][/.group_bits]` of a packed linear, checked against its shape; nil when the
    /// checkpoint has no `<prefix>.qweight`.
    func packedGrid(_ prefix: String, bits: Int, rows: Int, cols: Int) throws
        -> (scales: [Float], zeros: [Float], groupIndex: [Int32], groupBits: [Int]?)? {
        guard info(prefix + ".qweight") != nil else { return nil }
        let path = files[location[prefix + ".qweight"]!].path
        for part in [".scales", ".zeros"] where info(prefix + part) == nil {
            throw ModelFileError(path, "\(prefix).qweight has no \(prefix)\(part)")
        }
        let scales = try floats(prefix + ".scales"), zeros = try floats(prefix + ".zeros")
        guard let s = info(prefix + ".scales"), s.shape.count == 2, s.shape[0] == rows, s.shape[1] > 0, scales.count == zeros.count else {
            throw ModelFileError(path, "\(prefix).scales / .zeros must be [\(rows), groups] and agree")
        }
        // Zero points are integers on most grids; the ggml grids with a min (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) have z = m/s.
        guard scales.allSatisfy(\.isFinite), zeros.allSatisfy({ $0.isFinite && abs($0) <= 65536 }) else {
            throw ModelFileError(path, "\(prefix).scales / .zeros hold non-finite values or zero points beyond ±65536")
        }
        let groups = s.shape[1]
        var gIdx: [Int32]
        if info(prefix + ".g_idx") != nil {
            gIdx = try files[location[prefix + ".g_idx"]!].ints(prefix + ".g_idx").map { Int32(truncatingIfNeeded: $0) }
        } else {
            guard cols % groups == 0 else { throw ModelFileError(path, "\(prefix): \(groups) groups do not divide \(cols) columns") }
            gIdx = (0..<cols).map { Int32($0 / (cols / groups)) }
        }
        guard gIdx.count == cols, gIdx.allSatisfy({ $0 >= 0 && Int($0) < groups }) else {
            throw ModelFileError(path, "\(prefix).g_idx must hold \(cols) group numbers below \(groups)")
        }
        var groupBits: [Int]?
        if info(prefix + ".group_bits") != nil {
            let widths = try files[location[prefix + ".group_bits"]!].ints(prefix + ".group_bits")
            guard widths.count == groups, widths.allSatisfy({ (1...bits).contains($0) }) else {
                throw ModelFileError(path, "\(prefix).group_bits must hold \(groups) widths of 1…\(bits) bits")
            }
            groupBits = widths
        }
        return (scales, zeros, gIdx, groupBits)
    }

    /// The v1 packed linear `<prefix>.qweight/.scales/.zeros[/.g_idx]` if the checkpoint has one.
    public func packedLinear(_ prefix: String, bits: Int, rows: Int, cols: Int) throws -> PackedLinear? {
        guard let (scales, zeros, gIdx, groupBits) = try packedGrid(prefix, bits: bits, rows: rows, cols: cols) else { return nil }
        let q = info(prefix + ".qweight")!
        let file = files[location[prefix + ".qweight"]!], path = file.path
        let offsets = PackedLinear.offsets(cols: cols, bits: bits, groupIndex: gIdx, groupBits: groupBits)
        let rowBytes = (offsets[cols] + 7) / 8
        guard q.dtype == "U8", q.shape == [rows, rowBytes] else {
            throw ModelFileError(path, "\(prefix).qweight is \(q.dtype) \(q.shape), expected U8 [\(rows), \(rowBytes)] for its \(groupBits == nil ? "\(bits)-bit" : "mixed-width") codes")
        }
        let packed = [UInt8](UnsafeRawBufferPointer(start: file.file.base + q.offset, count: q.byteCount))
        return PackedLinear(bits: bits, rows: rows, cols: cols, packed: packed, scales: scales, zeros: zeros, groupIndex: gIdx,
                            groupBits: groupBits, columnOffsets: offsets)
    }
}
