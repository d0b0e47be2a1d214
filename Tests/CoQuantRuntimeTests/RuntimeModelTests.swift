@testable import CoQuantModel
@testable import CoQuantQuant
@testable import CoQuantRuntime
import CoQuantTensor
import Foundation
import XCTest

let fixturesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").path
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path
let modelsDir = ProcessInfo.processInfo.environment["COQUANT_MODELS"] ?? packageRoot + "/models"

/// WikiText-2 test tokens of SmolLM2's tokenizer (the fixture the tokenizer tests use).
func wikitextIds(_ count: Int, from start: Int = 0) throws -> [Int] {
    let file = try SafeTensorsFile(path: fixturesDir + "/smollm2/wikitext2_test_ids.safetensors")
    return Array(try file.ints("ids")[start..<(start + count)])
}

/// max |a − b| over the range of b.
func relativeToRange(_ a: [Float], _ b: [Float]) -> Float {
    var worst: Float = 0
    for i in a.indices { worst = max(worst, abs(a[i] - b[i])) }
    return worst / (b.max()! - b.min()!)
}

/// Rows of [rows, cols] where a and b differ by more than `tolerance` of b's range, and the worst such difference.
func differingRows(_ a: [Float], _ b: [Float], cols: Int, tolerance: Float) -> (rows: Int, worst: Float) {
    let range = b.max()! - b.min()!
    var rows = 0, worst: Float = 0
    for r in 0..<(a.count / cols) {
        var e: Float = 0
        for c in 0..<cols { e = max(e, abs(a[r * cols + c] - b[r * cols + c])) }
        if e > tolerance * range { rows += 1 }
        worst = max(worst, e / range)
    }
    return (rows, worst)
}

/// The packed runtime computes the simulator's function: a folder written by a quantizing run, loaded both ways,
/// gives the same outputs up to float summation order, on SmolLM2 for every scheme family.
///
/// Where activations are quantized, "up to summation order" holds token by token but not through the whole model: a
/// value within an ulp of a rounding boundary of a per-token quantizer lands on the other code, that token's element
/// moves by a whole step (range/15 at 4 bits), and through attention the change reaches later tokens and layers. The
/// simulator does the same to itself: its own KV-cache decode differs from its own prefill by 3 % of the logit range
/// on W8A8 (measured). So those schemes are compared layer by layer, each layer fed the simulator's residual stream:
/// every token but the rare one with a flipped code must agree to 1e-4 of the range (a kernel bug hits them all), and
/// end to end by perplexity (`bench/runtime-ppl.sh`). Weight-only schemes are compared end to end.
final class RuntimeModelTests: XCTestCase {
    func smolLM2() throws -> String {
        let path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("\(path) is missing: run scripts/download-models.sh smollm2")
        }
        return path
    }

    /// Quantizes SmolLM2 (RTN weights: the solver does not matter here, the grids do) into a folder.
    func quantizedFolder(_ method: Method, _ scheme: String, group: Int? = nil, granularity: BasisGranularity? = nil) throws -> String {
        var s = try QuantScheme(parsing: scheme)
        s.weightGroupSize = group
        var options = QuantizeOptions(method: method, scheme: s, solver: .rtn)
        options.nsamples = 2
        options.seqlen = 320      // ResQ/CoQuant statistics need ≥ d = 576 tokens
        if let granularity { options.subspace!.granularity = granularity }
        let loaded = try ModelLoader.load(try smolLM2())
        let windows = try [wikitextIds(320, from: 5000), wikitextIds(320, from: 9000)]
        let result = try quantizeModel(loaded.model, calibration: windows, options: options)
        let out = NSTemporaryDirectory() + "coquant-runtime-\(getpid())-\(method.rawValue)-\(scheme)-\(group ?? 0)-\(granularity?.rawValue ?? "")"
        _ = try writeQuantizedFolder(out, loaded: loaded, result: result, options: options)
        return out
    }

    func load(_ folder: String, runtime: Bool) throws -> LlamaModel {
        let loaded = runtime ? try Runtime.load(folder) : try ModelLoader.load(folder)
        XCTAssertEqual(loaded.packedKernels, runtime)
        try prepareForInference(loaded)
        return loaded.model
    }

    func checkRuntimeEqualsSimulator(_ method: Method, _ scheme: String, group: Int? = nil, granularity: BasisGranularity? = nil,
                                     file: StaticString = #filePath, line: UInt = #line) throws {
        let folder = try quantizedFolder(method, scheme, group: group, granularity: granularity)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let what = "\(method.rawValue) \(scheme)\(group.map { "g\($0)" } ?? "") \(granularity?.rawValue ?? "")"
        let simulator = try load(folder, runtime: false), runtime = try load(folder, runtime: true)
        // Every linear of the runtime model runs a packed kernel; none was expanded to fp32.
        XCTAssertTrue(runtime.layers.allSatisfy { l in
            [l.selfAttn.qProj, l.selfAttn.kProj, l.selfAttn.vProj, l.selfAttn.oProj, l.mlp.gateProj, l.mlp.upProj, l.mlp.downProj]
                .allSatisfy { $0.kernel != nil && $0.weight.isEmpty }
        }, what, file: file, line: line)
        XCTAssertTrue(runtime.embedTokens.isEmpty && runtime.embeddingKernel != nil, what, file: file, line: line)
        // A KV4 scheme decodes from a packed cache (codes and grids, no fp32 rows).
        XCTAssertEqual(runtime.makeCache(capacity: 1).format != nil, scheme.contains("KV"), what, file: file, line: line)
        let ids = try wikitextIds(96, from: 1000), prefix = 80
        let T = ids.count
        // Layer by layer on the simulator's residual stream: prefill, and decode through the KV cache.
        let d = simulator.config.hiddenSize
        var x = simulator.embed(ids), flipped = 0, flippedDecode = 0, worst: Float = 0
        for l in 0..<simulator.layers.count {
            var expected = x, got = x
            simulator.decoderLayer(l, &expected, rows: T, cache: nil)
            runtime.decoderLayer(l, &got, rows: T, cache: nil)
            let cache = runtime.makeCache(capacity: T)
            var decoded = Array(x[0..<(prefix * d)])
            runtime.decoderLayer(l, &decoded, rows: prefix, cache: cache)
            cache.advance(by: prefix)
            for t in prefix..<T {
                var row = Array(x[(t * d)..<((t + 1) * d)])
                runtime.decoderLayer(l, &row, rows: 1, cache: cache)
                cache.advance(by: 1)
                decoded += row
            }
            let prefill = differingRows(got, expected, cols: d, tolerance: 1e-4)
            let decode = differingRows(decoded, got, cols: d, tolerance: 1e-4)
            // A kernel or layout bug moves every token; a flipped code some of them (a flipped key code every later one).
            XCTAssertLessThan(prefill.rows, T * 3 / 4, "\(what) layer \(l): \(prefill.rows) of \(T) tokens differ from the simulator", file: file, line: line)
            XCTAssertLessThan(decode.rows, T * 3 / 4, "\(what) layer \(l): \(decode.rows) of \(T) decoded tokens differ from the prefill", file: file, line: line)
            flipped += prefill.rows
            flippedDecode += decode.rows
            worst = max(worst, prefill.worst)
            x = expected
        }
        XCTAssertLessThan(worst, 0.02, "\(what): a flipped code moved a layer's output by more than 2 % of its range", file: file, line: line)
        XCTAssertLessThan(flipped + flippedDecode, T * simulator.layers.count / 10, "\(what): more than 10 % of token-layers differ", file: file, line: line)
        var endToEnd: Float?
        if !scheme.contains("A4") && !scheme.contains("A8") {
            let expected = simulator.forward(ids), got = runtime.forward(ids)
            endToEnd = relativeToRange(got, expected)
            XCTAssertLessThan(endToEnd!, 1e-3, "\(what): runtime vs simulator logits", file: file, line: line)
            let cache = runtime.makeCache(capacity: T)
            var decoded = runtime.forward(Array(ids[0..<prefix]), cache: cache)
            for id in ids[prefix...] { decoded += runtime.forward([id], cache: cache) }
            XCTAssertLessThan(relativeToRange(decoded, got), 1e-3, "\(what): KV-cache decode vs prefill", file: file, line: line)
        }
        print("runtime vs simulator, \(what): \(flipped) + \(flippedDecode) flipped token-layers of \(T * simulator.layers.count), worst \(worst)\(endToEnd.map { ", logits \($0)" } ?? "")")
    }

    func testWeightOnly() throws {
        try checkRuntimeEqualsSimulator(.rtn, "W4A16")
        try checkRuntimeEqualsSimulator(.gptq, "W4A16", group: 64)     // SmolLM2's 576 columns do not divide by 128
        try checkRuntimeEqualsSimulator(.rtn, "W3A16")
    }

    func testIntegerActivations() throws {
        try checkRuntimeEqualsSimulator(.rtn, "W8A8")
        try checkRuntimeEqualsSimulator(.rtn, "W4A8")
        try checkRuntimeEqualsSimulator(.quarot, "W4A4KV4")
    }

    func testSubspaceMethods() throws {
        for g in [BasisGranularity.perLayer, .shared] {
            try checkRuntimeEqualsSimulator(.resq, "W4A4KV4", granularity: g)
            try checkRuntimeEqualsSimulator(.coquant, "W4A4KV4", granularity: g)
        }
    }
}
