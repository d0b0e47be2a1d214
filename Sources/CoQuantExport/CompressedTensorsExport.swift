import CoQuantModel
import Foundation

// A CoQuant folder as a compressed-tensors `pack-quantized` folder that transformers (CompressedTensorsHfQuantizer)
// and vLLM load (INTEROP.md; compressed-tensors 0.20 compressors/pack_quantized/{base,helpers}.py):
//   config.json        the HF config (as HFExport writes it, dtype float32) plus
//                      quantization_config = {quant_method: compressed-tensors, format: pack-quantized,
//                        quantization_status: compressed, config_groups.group_0 = {targets: ["Linear"], weights:
//                        {num_bits, type: int, symmetric, strategy: group | channel, group_size, actorder: null, …}},
//                        ignore: ["lm_head", and any decoder linear the folder left dense]}
//   model.safetensors  per quantized linear W [out, in]:
//                        <name>.weight_packed      I32 [out, ⌈in·b/32⌉]  LSB-first bitstream of the codes along the
//                                                  input (pack_to_int32: stored = q_signed + 2^(b−1), and our code u
//                                                  is exactly that with q_signed = u − 2^(b−1))
//                        <name>.weight_scale       F32 [out, in/group] ([out, 1] per channel): the folder's s
//                        <name>.weight_shape       I32 [2] = [out, in]
//                        <name>.weight_zero_point  I32 [⌈out·b/32⌉, in/group], asymmetric grids only: the zero points
//                                                  z packed along the OUTPUT dimension (pack_to_int32(zp, packed_dim=0)
//                                                  of zp_signed = z − 2^(b−1), i.e. stored z)
//                      the loader computes (q_signed − zp_signed)·scale = s·(u − z) in the scale's dtype: with F32
//                      scales that is the folder's value bit for bit. Symmetric (no zero point stored) iff every zero
//                      point of every linear is 2^(b−1). Embeddings, LM head (int8-row / int4 / f16 tables
//                      dequantized), norms and biases F32.
//   tokenizer files    copied as they are
//
// Refused before anything is written: quantized activations or KV cache (weight-only export), rotations / subspace
// bases (online operations the loader does not run), mixed-width column groups, groups that are not consecutive
// equal column ranges (act-order with groups), code widths other than 4 and 8, zero points outside the code range,
// and linears whose group sizes differ (one config group states one).

public struct CompressedTensorsExportReport: Sendable {
    /// (name, dtype, shape) per tensor, in file order.
    public var tensors: [(name: String, dtype: String, shape: [Int])] = []
    public var bits = 0
    /// Columns per group; nil per channel.
    public var groupSize: Int?
    public var symmetric = true
    /// Linears written packed.
    public var quantizedLinears = 0
    public var bytes = 0
}

public enum CompressedTensorsExport {
    /// Writes `folder` as the compressed-tensors folder `out` (atomically; an existing `out` only with `overwrite`).
    public static func write(folder: String, to out: String, overwrite: Bool = false) throws -> CompressedTensorsExportReport {
        if FileManager.default.fileExists(atPath: out) && !overwrite {
            throw ModelFileError(out, "already exists (pass --overwrite to replace it)")
        }
        let config = try ModelConfiguration.load(folder + "/config.json")
        let quant = try QuantizationConfig.load(folder + "/config.json")
        let ckpt = try SafeTensorsCheckpoint(folder: folder)
        guard let q = quant else {
            throw ModelFileError(folder, "is not quantized: a compressed-tensors folder holds quantized linears (export --format hf for a dense folder)")
        }
        try refuseWhatCannotBeCarried(folder, q)
        let bits = q.weights.bits
        guard bits == 4 || bits == 8 else {
            throw ModelFileError(folder, "has \(bits)-bit codes: this exporter writes 4- or 8-bit pack-quantized weights")
        }

        let tensors = hfTensors(config)
        var planes: [String: PackedPlanes] = [:]
        for (name, shape) in tensors where name.contains(".layers.") && shape.count == 2 {
            let prefix = String(name.dropLast(7))
            if let p = try ckpt.packedCodes(prefix, quantization: q, rows: shape[0], cols: shape[1]) { planes[prefix] = p }
        }
        guard !planes.isEmpty else {
            throw ModelFileError(folder, "has no packed linears: nothing to write as pack-quantized (export --format hf for a dense folder)")
        }
        var report = CompressedTensorsExportReport()
        report.bits = bits
        let half = Float(1 << (bits - 1)), top = 1 << bits
        report.symmetric = planes.values.allSatisfy { $0.zeros.allSatisfy { $0 == half } }
        for prefix in planes.keys.sorted() {
            let p = planes[prefix]!
            if ckpt.info(prefix + ".group_bits") != nil || p.layout.runs.contains(where: { $0.planes != p.layout.runs[0].planes }) {
                throw ModelFileError(folder, "\(prefix) mixes code widths across column groups: a pack-quantized layer has one width")
            }
            if let z = p.zeros.first(where: { $0 < 0 || $0 >= Float(top) }) {
                throw ModelFileError(folder, "\(prefix) has zero point \(Int(z)), outside the \(bits)-bit code range a packed zero point holds")
            }
        }
        // One group size for every linear: consecutive equal runs, group g = columns g·G ..< (g + 1)·G.
        var widths = Set<Int>()
        for prefix in planes.keys.sorted() {
            let p = planes[prefix]!, G = p.cols / p.groups
            let consecutive = p.cols % p.groups == 0 && p.layout.runs.count == p.groups
                && p.layout.runs.enumerated().allSatisfy { k, run in run.group == k && run.col == k * G && run.count == G }
            guard consecutive else {
                throw ModelFileError(folder, "\(prefix): its \(p.groups) column groups are not consecutive ranges of equal width (act-order with groups), which compressed-tensors' groups of consecutive columns cannot express")
            }
            if p.groups > 1 { widths.insert(G) }
        }
        let perChannel = planes.values.allSatisfy { $0.groups == 1 }
        if !perChannel {
            guard widths.count == 1, let G = widths.first,
                  planes.values.allSatisfy({ $0.cols % G == 0 && $0.groups == $0.cols / G }) else {
                throw ModelFileError(folder, "its linears have different group sizes (\(widths.sorted().map(String.init).joined(separator: ", ")) columns, or whole rows): one pack-quantized config group states one")
            }
            report.groupSize = G
        }

        var file = SafeTensorsWriter()
        file.metadata = ["format": "pt", "producer": "coquant"]
        var ignore = ["lm_head"]
        for (name, shape) in tensors {
            let prefix = name.hasSuffix(".weight") ? String(name.dropLast(7)) : name
            if let p = planes[prefix] {
                let packed = packedWeight(p, bits: bits)
                file.add(prefix + ".weight_packed", packed.words, shape: [p.rows, packed.perRow])
                file.add(prefix + ".weight_scale", p.scales, shape: [p.rows, p.groups])
                file.add(prefix + ".weight_shape", [Int32(p.rows), Int32(p.cols)], shape: [2])
                if !report.symmetric {
                    let zp = packedZeroPoints(p, bits: bits)
                    file.add(prefix + ".weight_zero_point", zp.words, shape: [zp.packedRows, p.groups])
                }
                report.quantizedLinears += 1
            } else {
                if name.contains(".layers."), shape.count == 2 { ignore.append(prefix) }
                file.add(name, try HFExport.denseValues(folder, ckpt, q, name, shape).values, shape: shape)
            }
        }

        var weights: [String: Any] = ["num_bits": bits, "type": "int", "symmetric": report.symmetric,
                                      "strategy": perChannel ? "channel" : "group", "actorder": NSNull(),
                                      "dynamic": false, "observer": "minmax"]
        weights["group_size"] = report.groupSize ?? NSNull()
        let quantizationConfig: [String: Any] = [
            "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": ["group_0": ["targets": ["Linear"], "weights": weights, "input_activations": NSNull(),
                                          "output_activations": NSNull(), "format": "pack-quantized"]],
            "ignore": ignore, "kv_cache_scheme": NSNull(),
        ]
        let configData = try hfConfig(config, dtype: "float32", quantizationConfig: quantizationConfig)
        report.tensors = file.tensors
        report.bytes = try writeHFFolder(out, overwrite: overwrite, config: configData, file: file, tokenizerFrom: folder)
        return report
    }

    static func refuseWhatCannotBeCarried(_ folder: String, _ q: QuantizationConfig) throws {
        if let a = q.activations {
            throw ModelFileError(folder, "quantizes activations to \(a.bits) bits (\(q.scheme)): this exporter writes weight-only pack-quantized folders, which would run them in full precision; quantize weight-only (e.g. W4A16) to export")
        }
        if let kv = q.kvCache {
            throw ModelFileError(folder, "quantizes the KV cache to \(kv.bits) bits with its own scales: this exporter writes weight-only folders, which would lose that")
        }
        if let what = HFExport.onlineOperations(q) {
            throw ModelFileError(folder, "was quantized with \(q.method)'s rotations, whose online operations (\(what)) a compressed-tensors folder loaded by transformers does not run (it would run the model without them)")
        }
    }

    /// Values [rows, cols] (each below 2^bits) as compressed-tensors' pack_to_int32 writes them: each row an LSB-first
    /// bitstream of `bits`-bit values, value c at bits c·bits … of the row, in ⌈cols·bits/32⌉ int32 words.
    static func pack(rows: Int, cols: Int, bits: Int, value: (Int, Int) -> Int) -> (words: [Int32], perRow: Int) {
        precondition((1...8).contains(bits))
        let perRow = (cols * bits + 31) / 32
        var words = [UInt32](repeating: 0, count: rows * perRow)
        for r in 0..<rows {
            for c in 0..<cols {
                let v = UInt64(value(r, c)) & (UInt64(1) << UInt64(bits) - 1), bit = c * bits
                let shifted = v << UInt64(bit % 32)
                words[r * perRow + bit / 32] |= UInt32(truncatingIfNeeded: shifted)
                if shifted >> 32 != 0 { words[r * perRow + bit / 32 + 1] |= UInt32(truncatingIfNeeded: shifted >> 32) }
            }
        }
        return (words.map { Int32(bitPattern: $0) }, perRow)
    }

    /// The inverse of `pack`: values [rows, cols] in 0 ..< 2^bits.
    static func unpack(_ words: [Int32], rows: Int, cols: Int, bits: Int) -> [Int] {
        let perRow = (cols * bits + 31) / 32, mask = UInt64(1) << UInt64(bits) - 1
        return (0..<(rows * cols)).map { i in
            let r = i / cols, bit = i % cols * bits, w = r * perRow + bit / 32
            var v = UInt64(UInt32(bitPattern: words[w]))
            if w + 1 < (r + 1) * perRow { v |= UInt64(UInt32(bitPattern: words[w + 1])) << 32 }
            return Int(v >> UInt64(bit % 32) & mask)
        }
    }

    /// weight_packed: the codes u (= q_signed + 2^(b−1)) of each row.
    static func packedWeight(_ p: PackedPlanes, bits: Int) -> (words: [Int32], perRow: Int) {
        pack(rows: p.rows, cols: p.cols, bits: bits) { p.code($0, $1) }
    }

    /// weight_zero_point: zero points z [rows, groups] packed along the rows (packed_dim = 0): the bitstream of
    /// column g of z is column g of the result [⌈rows·b/32⌉, groups].
    static func packedZeroPoints(_ p: PackedPlanes, bits: Int) -> (words: [Int32], packedRows: Int) {
        let G = p.groups
        let t = pack(rows: G, cols: p.rows, bits: bits) { g, r in Int(p.zeros[r * G + g]) }     // [G, packedRows]
        var words = [Int32](repeating: 0, count: t.words.count)
        for g in 0..<G { for k in 0..<t.perRow { words[k * G + g] = t.words[g * t.perRow + k] } }
        return (words, t.perRow)
    }
}
