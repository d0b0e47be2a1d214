import CoQuantModel
import Foundation

// A CoQuant folder (quantized or not) as a GGUF file llama.cpp loads (INTEROP.md, ggml docs/gguf.md).
//
// Each quantized linear keeps its solved codes; the grid decides the block type:
//   4-bit, zero 8 (symmetric grids)           Q4_0   d = s                   value d·(q − 8)
//   4-bit, other integer zeros (asymmetric)   Q4_1   d = s, m = −s·z         value d·q + m
//   5-bit, zero 16                            Q5_0   d = s
//   5-bit, fractional zeros (GGUF schemes)    Q5_1   d = s, m = −s·z
//   8-bit, zero 128                           Q8_0   d = s, q − 128
// A group (or the whole row, per channel) spans whole 32-column blocks, each repeating the group's parameters.
// A folder solved on a llama.cpp file type (`--scheme Q4_K_M`) writes each linear as the block type that scheme gave
// it (`GGUFFileType.linearType`): the K-quants' 256-column super-blocks take their integer sub-block scales (and
// mins) back from the sub-block grids, s = d·sc and s·z = dmin·m.
// The file stores d and m as fp16: folders solved on a ggml grid (`--scheme Q4_0 …`) hold fp16 values already and
// export bit for bit; any other scale is rounded, and the report says by how much. Tables: int8-row → Q8_0,
// int4-g32 → Q4_1, f16 → F16, f32 → F32; norms and biases F32. `dense` writes every matrix as F32 or F16 from the
// folder's dequantized values instead (the fallback llama.cpp always loads, and the reference for tolerances).
//
// What a GGUF cannot carry is refused before anything is written: quantized activations or KV cache (llama.cpp
// quantizes activations itself and has its own KV-cache types), the online Hadamards and basis changes of
// QuaRot/ResQ/CoQuant, mixed-width column groups, groups that do not cover whole 32-column blocks (act-order with
// dynamic groups, group sizes not a multiple of 32), grids without a block type (3-bit, asymmetric 8-bit), and
// llama3-style RoPE scaling.

public enum DenseType: String, CaseIterable, Sendable {
    case f32, f16

    var ggml: GGMLType { self == .f32 ? .f32 : .f16 }
}

public struct GGUFExportReport: Sendable {
    /// (GGUF name, type) per tensor, in file order.
    public var tensors: [(name: String, type: GGMLType)] = []
    /// Block parameters (d, and m for Q4_1) that were not fp16 values and were rounded, of all written.
    public var roundedParameters = 0, parameters = 0
    /// The largest relative change rounding made to one of them.
    public var largestRounding = 0.0
    public var bytes = 0
    public var fileType: UInt32 = 0

    /// "Q4_0 ×210, Q8_0 ×1, F32 ×61".
    public var typeSummary: String {
        var counts: [String: Int] = [:]
        for t in tensors { counts[t.type.name, default: 0] += 1 }
        return counts.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }
            .map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")
    }
}

public enum GGUFExport {
    /// Writes `folder` as the GGUF `path` (atomically; an existing `path` only with `overwrite`).
    public static func write(folder: String, to path: String, dense: DenseType? = nil, overwrite: Bool = false) throws -> GGUFExportReport {
        if FileManager.default.fileExists(atPath: path) && !overwrite {
            throw ModelFileError(path, "already exists (pass --overwrite to replace it)")
        }
        let config = try ModelConfiguration.load(folder + "/config.json")
        let quant = try QuantizationConfig.load(folder + "/config.json")
        let ckpt = try SafeTensorsCheckpoint(folder: folder)
        try refuseWhatGGUFCannotCarry(folder, config, quant)
        guard FileManager.default.fileExists(atPath: folder + "/tokenizer.json") else {
            throw ModelFileError(folder, "has no tokenizer.json: a GGUF carries its tokenizer, so there is nothing to export it from")
        }
        let tokenizerConfig = folder + "/tokenizer_config.json"
        let hasConfig = FileManager.default.fileExists(atPath: tokenizerConfig)
        let tokenizer = try Tokenizer(tokenizerJSON: folder + "/tokenizer.json", tokenizerConfig: hasConfig ? tokenizerConfig : nil)

        var report = GGUFExportReport()
        var w = GGUFWriter()
        let arch = config.modelType
        w.set("general.architecture", .string(arch))
        w.set("general.name", .string(URL(fileURLWithPath: folder).lastPathComponent))
        w.set("general.quantization_version", .u32(2))
        w.set("\(arch).block_count", .u32(UInt32(config.numHiddenLayers)))
        w.set("\(arch).context_length", .u32(UInt32(config.maxPositionEmbeddings)))
        w.set("\(arch).embedding_length", .u32(UInt32(config.hiddenSize)))
        w.set("\(arch).feed_forward_length", .u32(UInt32(config.intermediateSize)))
        w.set("\(arch).attention.head_count", .u32(UInt32(config.numAttentionHeads)))
        w.set("\(arch).attention.head_count_kv", .u32(UInt32(config.numKeyValueHeads)))
        if config.headDim * config.numAttentionHeads != config.hiddenSize {
            w.set("\(arch).attention.key_length", .u32(UInt32(config.headDim)))
            w.set("\(arch).attention.value_length", .u32(UInt32(config.headDim)))
        }
        w.set("\(arch).attention.layer_norm_rms_epsilon", .f32(Float(config.rmsNormEps)))
        w.set("\(arch).rope.freq_base", .f32(Float(config.ropeTheta)))
        w.set("\(arch).rope.dimension_count", .u32(UInt32(config.headDim)))
        w.set("\(arch).vocab_size", .u32(UInt32(config.vocabSize)))
        w.set(paddedVocabulary(tokenizer.ggufMetadata(chatTemplate: tokenizer.chatTemplate), to: config.vocabSize))

        let source = Source(folder: folder, config: config, ckpt: ckpt, quant: quant, dense: dense)
        var linearTypes: [GGMLType] = []
        func add(_ hf: String, _ shape: [Int]) throws {
            let name = ModelLoader.ggufTensorName(hf)
            let prefix = hf.hasSuffix(".weight") ? String(hf.dropLast(7)) : hf
            // llama's q/k rows (and biases) in llama.cpp's interleaved RoPE order.
            let order = arch == "llama" && (prefix.hasSuffix("q_proj") || prefix.hasSuffix("k_proj") || hf.hasSuffix("q_proj.bias") || hf.hasSuffix("k_proj.bias"))
                ? ModelLoader.ggufRowOrder(rows: shape[0], headDim: config.headDim) : nil
            let tensor = try source.tensor(hf, prefix: prefix, shape: shape, rowOrder: order, report: &report)
            w.add(tensor: name, type: tensor.type, dims: shape.reversed(), bytes: tensor.bytes)
            report.tensors.append((name, tensor.type))
            if hf.contains(".layers."), shape.count == 2 { linearTypes.append(tensor.type) }
        }

        for (hf, shape) in hfTensors(config) { try add(hf, shape) }

        report.fileType = quant.flatMap { GGUFFileType(name: $0.scheme)?.id } ?? fileType(linearTypes)
        w.set("general.file_type", .u32(report.fileType))
        try w.write(to: path)
        report.bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        return report
    }

    static func refuseWhatGGUFCannotCarry(_ folder: String, _ config: ModelConfiguration, _ quant: QuantizationConfig?) throws {
        if let r = config.ropeScaling, r.ropeType != "default" {
            throw ModelFileError(folder, "uses \(r.ropeType) RoPE scaling, which this exporter does not write (llama.cpp wants it as a rope_freqs tensor)")
        }
        guard let q = quant else { return }
        if let a = q.activations {
            throw ModelFileError(folder, "quantizes activations to \(a.bits) bits (\(q.scheme)): a GGUF holds weights only and llama.cpp quantizes activations itself; quantize weight-only (e.g. --scheme Q4_0 or W4A16) to export")
        }
        if let kv = q.kvCache {
            throw ModelFileError(folder, "quantizes the KV cache to \(kv.bits) bits with its own scales: a GGUF cannot carry that (llama.cpp's KV types are a run-time flag, -ctk/-ctv)")
        }
        if let what = HFExport.onlineOperations(q) {
            throw ModelFileError(folder, "was quantized with \(q.method)'s rotations, whose online operations (\(what)) a GGUF cannot carry (llama.cpp would run the model without them; quarot with --no-online-rotations fuses every rotation into the weights)")
        }
    }

    /// llama.cpp wants one token per embedding row.
    static func paddedVocabulary(_ entries: [(String, GGUFWriter.Value)], to rows: Int) -> [(String, GGUFWriter.Value)] {
        entries.map { key, value in
            switch (key, value) {
            case ("tokenizer.ggml.tokens", .strings(let t)) where t.count < rows:
                return (key, .strings(t + (t.count..<rows).map { "[PAD\($0)]" }))
            case ("tokenizer.ggml.token_type", .i32s(let t)) where t.count < rows:
                return (key, .i32s(t + [Int32](repeating: 5, count: rows - t.count)))     // 5: unused
            default:
                return (key, value)
            }
        }
    }

    /// An fp16 unit u and integers n_j in `range` with u·n_j = v_j: exactly when the v_j are such products in fp32
    /// (the sub-block scales), to two ulps when they were derived (the mins, s·z). The value of largest magnitude is
    /// tried against every integer from the range's extremes inwards, since a grid whose d is subnormal in fp16 need
    /// not give its largest sub-block the extreme integer; any u that fits encodes the same values. None fitting (a
    /// folder not solved on this grid): u from the extreme, each integer the nearest, and the rounding reported.
    static func decompose(_ v: [Float], _ range: ClosedRange<Int>, exactProducts: Bool, _ report: inout GGUFExportReport) -> (Float16, [Int]) {
        report.parameters += v.count
        let top = v.indices.max { abs(v[$0]) < abs(v[$1]) }!
        guard v[top] != 0 else { return (1, v.map { _ in range.contains(0) ? 0 : range.lowerBound }) }
        func fits(_ x: Float, _ u: Float) -> Bool { exactProducts ? x == u : abs(x - u) <= 2 * max(x.ulp, u.ulp) }
        let candidates = Array(range).filter { $0 != 0 }.sorted { abs($0) > abs($1) }
        for n in candidates {
            let u = Float16(v[top] / Float(n))
            guard u != 0, u.isFinite, fits(v[top], Float(u) * Float(n)) else { continue }
            var ints: [Int] = []
            for x in v {
                let m = (x / Float(u)).rounded()
                guard range.contains(Int(m)), fits(x, Float(u) * m) else { break }
                ints.append(Int(m))
            }
            if ints.count == v.count { return (u, ints) }
        }
        let extreme = range.upperBound > 0 && (v[top] > 0 || range.lowerBound >= 0) ? range.upperBound : range.lowerBound
        var u = Float16(v[top] / Float(extreme))
        if u == 0 { u = 1 }
        let ints = v.map { Int(min(max(($0 / Float(u)).rounded(), Float(range.lowerBound)), Float(range.upperBound))) }
        for (x, n) in zip(v, ints) where Float(u) * Float(n) != x {
            report.roundedParameters += 1
            report.largestRounding = max(report.largestRounding, Double(abs(Float(u) * Float(n) - x) / max(abs(x), .leastNormalMagnitude)))
        }
        return (u, ints)
    }

    /// llama.cpp's `llama_ftype` of the linears' dominant type.
    static func fileType(_ types: [GGMLType]) -> UInt32 {
        var counts: [GGMLType: Int] = [:]
        for t in types { counts[t, default: 0] += 1 }
        let top = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key.rawValue > $1.key.rawValue) }?.key ?? .f32
        switch top {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        default: return 0
        }
    }
}

/// Where each tensor's bytes come from.
private struct Source {
    let folder: String
    let config: ModelConfiguration
    let ckpt: SafeTensorsCheckpoint
    let quant: QuantizationConfig?
    let dense: DenseType?

    func tensor(_ hf: String, prefix: String, shape: [Int], rowOrder: [Int]?, report: inout GGUFExportReport)
        throws -> (type: GGMLType, bytes: () throws -> [UInt8]) {
        let rows = shape[0], cols = shape.count == 2 ? shape[1] : 1
        let table = prefix == "model.embed_tokens" || prefix == "lm_head"
        if shape.count == 2, dense == nil {
            if let t = try ckpt.int8Rows(prefix, rows: rows, cols: cols) {
                return (.q8_0, try int8Blocks(t, prefix, rowOrder, &report))
            }
            if let q = quant, let p = try ckpt.packedCodes(prefix, quantization: q, rows: rows, cols: cols) {
                if !table, let t = schemeType(prefix, q, cols: cols), let bits = t.codeBits {
                    return t.kScales != nil ? (t, try kBlocks(p, t, prefix, rowOrder, &report))
                        : try codeBlocks(p, bits: bits, prefix, rowOrder, &report)
                }
                return try codeBlocks(p, bits: table ? 4 : q.weights.bits, prefix, rowOrder, &report)
            }
            if table, let f = try ckpt.f16Rows(prefix, rows: rows, cols: cols) {
                let bits = Array(f.bits)
                return (.f16, { reorder(bits, rows: rows, rowOrder).flatMap { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] } })
            }
        }
        // Dense: 1-D tensors always F32 (llama.cpp's norms and biases), matrices as asked (default F32).
        let type: GGMLType = shape.count == 2 ? (dense ?? .f32).ggml : .f32
        let ckpt = self.ckpt, folder = self.folder, quant = self.quant
        return (type, {
            let values = reorder(try HFExport.denseValues(folder, ckpt, quant, hf, shape).values, rows: rows, rowOrder)
            if type == .f16 {
                return values.flatMap { v -> [UInt8] in let b = Float16(v).bitPattern; return [UInt8(truncatingIfNeeded: b), UInt8(truncatingIfNeeded: b >> 8)] }
            }
            return values.withUnsafeBytes { Array($0) }
        })
    }

    /// Q8_0 from an int8-row table: its codes as they are, the row's scale as every block's d.
    func int8Blocks(_ t: Int8Rows, _ prefix: String, _ order: [Int]?, _ report: inout GGUFExportReport) throws -> () throws -> [UInt8] {
        guard t.cols % 32 == 0 else {
            throw ModelFileError(folder, "\(prefix) has \(t.cols) columns, not a multiple of 32: no GGUF block type fits (export --type f16)")
        }
        for s in t.scales { note(s, &report, count: t.cols / 32) }
        return {
            let blocks = t.cols / 32, size = GGMLType.q8_0.typeSize
            var out = [UInt8](repeating: 0, count: t.rows * blocks * size)
            var q = [UInt8](repeating: 0, count: 32)
            for k in 0..<t.rows {
                let r = order?[k] ?? k
                for b in 0..<blocks {
                    for j in 0..<32 { q[j] = UInt8(Int(t.codes[r * t.cols + b * 32 + j]) + 128) }
                    out.withUnsafeMutableBufferPointer { o in
                        encodeBlock(.q8_0, codes: q, d: Float16(t.scales[r]), into: o.baseAddress! + (k * blocks + b) * size)
                    }
                }
            }
            return out
        }
    }

    /// The block type a GGUF scheme (`--scheme Q4_K_M`) or grid (`--weight-grid Q6_K`) solved decoder linear `prefix`
    /// on; nil for other folders.
    func schemeType(_ prefix: String, _ q: QuantizationConfig, cols: Int) -> GGMLType? {
        guard let f = GGUFFileType(name: q.scheme) else {
            // config.json's grid is `GridScheme.configName`: "ggml Q6_K (…)" for a block type's grid.
            guard q.weights.grid.hasPrefix("ggml ") else { return nil }
            let name = q.weights.grid.dropFirst(5).prefix { $0 != " " }
            return GGMLType.codeTypes.first { $0.name == name }
        }
        let parts = prefix.split(separator: ".")
        guard parts.count == 5, parts[1] == "layers", let layer = Int(parts[2]) else { return nil }
        return f.linearType(parts[3...].joined(separator: "."), layer: layer, config: config, columns: cols)
    }

    /// K-quant super-blocks from a linear solved on that K grid: each 256 columns' sub-block grids (s = d·sc, and
    /// z = dmin·m/s with a min) give back the integers d, sc (and dmin, m) the grid chose; any grid that is not one
    /// (a scale that is no integer multiple of an fp16 d) is rounded to the nearest and counted in the report.
    func kBlocks(_ p: PackedPlanes, _ t: GGMLType, _ prefix: String, _ order: [Int]?, _ report: inout GGUFExportReport) throws
        -> () throws -> [UInt8] {
        let sub = t.subBlockSize!, k = t.kScales!, G = p.groups, perBlock = 256 / sub
        guard p.cols % 256 == 0 else {
            throw ModelFileError(folder, "\(prefix) has \(p.cols) columns, not a multiple of 256: no \(t.name) block fits")
        }
        let columnGroup = p.columnGroups
        for b in stride(from: 0, to: p.cols, by: sub) where columnGroup[b..<(b + sub)].contains(where: { $0 != columnGroup[b] }) {
            throw ModelFileError(folder, "\(prefix): columns \(b)…\(b + sub - 1) belong to different groups, which \(t.name)'s \(sub)-column sub-blocks cannot express")
        }
        let zero = Float((1 << t.codeBits!) / 2)
        // The integers of every super-block, row by row (rows in file order), and the rounding they needed.
        var params: [KBlockParameters] = []
        params.reserveCapacity(p.rows * p.cols / 256)
        for kr in 0..<p.rows {
            let r = order?[kr] ?? kr
            for b in 0..<(p.cols / 256) {
                let groups = (0..<perBlock).map { columnGroup[b * 256 + $0 * sub] }
                let s = groups.map { p.scales[r * G + $0] }, z = groups.map { p.zeros[r * G + $0] }
                if !k.mins, let bad = z.first(where: { $0 != zero }) {
                    throw ModelFileError(folder, "\(prefix): zero point \(bad) where \(t.name) has \(Int(zero))")
                }
                let mins = k.mins ? zip(s, z).map { $0 * $1 } : []
                let (d, scales) = GGUFExport.decompose(s, k.range, exactProducts: true, &report)
                let (dmin, minInts) = k.mins ? GGUFExport.decompose(mins, k.range, exactProducts: false, &report) : (0, [])
                params.append(KBlockParameters(d: d, dmin: dmin, scales: scales, mins: minInts))
            }
        }
        let blocks = p.cols / 256
        return {
            blockBytes(p, order, width: 256, type: t) { q, kr, _, b, out in encodeKBlock(t, codes: q, params[kr * blocks + b], into: out) }
        }
    }

    /// The bytes of every row's blocks of `width` codes, rows in file order (`order`): `encode(codes, file row, folder
    /// row, block, out)` writes one block of `type`.
    func blockBytes(_ p: PackedPlanes, _ order: [Int]?, width: Int, type: GGMLType,
                    _ encode: (UnsafePointer<UInt8>, Int, Int, Int, UnsafeMutablePointer<UInt8>) -> Void) -> [UInt8] {
        let blocks = p.cols / width, size = type.typeSize
        var out = [UInt8](repeating: 0, count: p.rows * blocks * size)
        var q = [UInt8](repeating: 0, count: width)
        out.withUnsafeMutableBufferPointer { o in
            for kr in 0..<p.rows {
                let r = order?[kr] ?? kr
                for b in 0..<blocks {
                    for j in 0..<width { q[j] = UInt8(p.code(r, b * width + j)) }
                    encode(q, kr, r, b, o.baseAddress! + (kr * blocks + b) * size)
                }
            }
        }
        return out
    }

    /// Blocks from a packed linear's codes and grid (the table at the top of the file).
    func codeBlocks(_ p: PackedPlanes, bits: Int, _ prefix: String, _ order: [Int]?, _ report: inout GGUFExportReport) throws
        -> (type: GGMLType, bytes: () throws -> [UInt8]) {
        let G = p.groups
        guard p.layout.runs.allSatisfy({ $0.planes == p.layout.runs[0].planes }) else {
            throw ModelFileError(folder, "\(prefix) mixes code widths across column groups: no GGUF block type carries that")
        }
        guard p.cols % 32 == 0 else {
            throw ModelFileError(folder, "\(prefix) has \(p.cols) columns, not a multiple of 32: no GGUF block type fits (export --type f16)")
        }
        // The group of each 32-column block: every column of a block must share it.
        let columnGroup = p.columnGroups
        let blockGroup = stride(from: 0, to: p.cols, by: 32).map { columnGroup[$0] }
        for (b, g) in blockGroup.enumerated() where columnGroup[(b * 32)..<(b * 32 + 32)].contains(where: { $0 != g }) {
            throw ModelFileError(folder, "\(prefix): columns \(b * 32)…\(b * 32 + 31) belong to different groups (act-order with dynamic groups — quantize with --static-groups — or a group size that is not a multiple of 32), which GGUF's 32-column blocks cannot express")
        }
        let symmetricZero: Float? = p.zeros.allSatisfy({ $0 == p.zeros[0] }) ? p.zeros[0] : nil
        let type: GGMLType
        switch (bits, symmetricZero) {
        case (4, 8): type = .q4_0
        case (4, _): type = .q4_1
        case (5, 16): type = .q5_0
        case (5, _) where quant.flatMap({ GGUFFileType(name: $0.scheme) }) != nil: type = .q5_1
        case (8, 128): type = .q8_0
        default:
            throw ModelFileError(folder, "\(prefix): \(bits)-bit codes with zero points \(symmetricZero.map { "\(Int($0))" } ?? "per group") have no 32-value GGUF block type (export --type f16 for a dense file)")
        }
        for r in 0..<p.rows {
            for g in Set(blockGroup) {
                let s = p.scales[r * G + g]
                note(s, &report, count: 1)
                if type == .q4_1 || type == .q5_1 { note(-s * p.zeros[r * G + g], &report, count: 1, derived: true) }
            }
        }
        return (type, {
            blockBytes(p, order, width: 32, type: type) { q, _, r, b, out in
                let s = p.scales[r * G + blockGroup[b]], z = p.zeros[r * G + blockGroup[b]]
                encodeBlock(type, codes: q, d: Float16(s), m: Float16(-s * z), into: out)
            }
        })
    }

    /// Counts a block parameter the file stores as fp16, and whether rounding changed it.
    /// `derived`: v is a product the folder does not store (m = −s·z), exact only to an ulp or two of fp32.
    func note(_ v: Float, _ report: inout GGUFExportReport, count: Int, derived: Bool = false) {
        report.parameters += count
        let h = Float(Float16(v))
        guard h != v && !(derived && abs(h - v) <= 2 * v.ulp) else { return }
        report.roundedParameters += count
        report.largestRounding = max(report.largestRounding, Double(abs(h - v) / max(abs(v), .leastNormalMagnitude)))
    }
}

/// Rows of a row-major [rows, n] array in `order` (out row k = row order[k]).
private func reorder<T>(_ a: [T], rows: Int, _ order: [Int]?) -> [T] {
    guard let order else { return a }
    let n = a.count / rows
    var out = a
    for k in 0..<rows { for c in 0..<n { out[k * n + c] = a[order[k] * n + c] } }
    return out
}
