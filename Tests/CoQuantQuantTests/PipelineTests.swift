import CoQuantModel
import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantQuant

final class PipelineTests: XCTestCase {
    let dir = fixturesDir + "/tiny-models/c_qwen2_bias_untied"
    let windows = [[1, 5, 9, 200, 0, 17, 33, 250, 8, 8], [299, 4, 4, 100, 101, 102, 7, 6, 5, 3], [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]]

    /// A solver that keeps W: the propagated inputs are the plain forward's layer outputs, every group's H is
    /// (2/n) Σ XᵀX of exactly the input the hooks see, and the model is unchanged.
    func testIdentitySolverPropagatesAndCollectsTheRightHessians() throws {
        let reference = try ModelLoader.load(dir).model
        var seen: [String: Matrix<Double>] = [:]     // "layer.site" → Σ XᵀX over windows
        reference.hook = { l, site, x, rows, cols in
            let m = Matrix(rows: rows, cols: cols, data: (0..<(rows * cols)).map { Double(x[$0]) })
            let key = "\(l).\(site)"
            let xtx = matmul(m, transA: true, m)
            seen[key] = seen[key].map { prev in Matrix(rows: cols, cols: cols, data: zip(prev.data, xtx.data).map(+)) } ?? xtx
        }
        let logits = windows.map { reference.forward($0) }
        reference.hook = nil

        let model = try ModelLoader.load(dir).model
        let calib = try LayerwiseCalibration(model: model, windows: windows)
        let siteOf = ["self_attn.q_proj": HookSite.attentionInput, "self_attn.o_proj": .oProjInput,
                      "mlp.gate_proj": .mlpInput, "mlp.down_proj": .downProjInput]
        for _ in 0..<model.config.numHiddenLayers {
            let reports = try calib.quantizeNextLayer { layer, name, W, H in
                if let site = siteOf[name] {
                    let want = seen["\(layer).\(site)"]!
                    let scaled = want.data.map { $0 * 2 / Double(self.windows.count) }
                    // Each window's XᵀX is a float32 product (ssyrk), summed in float64: float32 accuracy.
                    let scale = scaled.map(abs).max()!
                    for i in H.data.indices { XCTAssertEqual(H.data[i], scaled[i], accuracy: 1e-6 * scale, "\(layer) \(name) H") }
                }
                var q = try RTN().solve(W: W, H: nil, grid: .weight(bits: 8))
                q.values = W
                return q
            }
            XCTAssertEqual(reports.map(\.name), DecoderLayer.linearNames)
            XCTAssertTrue(reports.allSatisfy { $0.loss == 0 })
        }
        for (w, ids) in windows.enumerated() {
            let out = model.forward(ids)
            XCTAssertLessThan(zip(out, logits[w]).map { abs($0 - $1) }.max()!, 1e-5)
        }
    }

    /// RTN 4-bit through the pipeline: each linear's reported loss is the loss of the weights now in the model.
    func testRTNThroughPipeline() throws {
        let original = try ModelLoader.load(dir).model
        let model = try ModelLoader.load(dir).model
        let calib = try LayerwiseCalibration(model: model, windows: windows)
        var reports: [LinearReport] = []
        while calib.nextLayer < model.config.numHiddenLayers {
            reports += try calib.quantizeNextLayer { _, _, W, _ in try RTN().solve(W: W, H: nil, grid: .weight(bits: 4, scheme: .symmetric)) }
        }
        XCTAssertEqual(reports.count, 7 * model.config.numHiddenLayers)
        XCTAssertTrue(reports.allSatisfy { $0.loss > 0 })
        // The weights changed, and each sits on a 4-bit grid per row: at most 16 distinct values per row.
        let q = model.layers[1].mlp.downProj, o = original.layers[1].mlp.downProj
        XCTAssertNotEqual(q.weight, o.weight)
        for r in 0..<q.outFeatures { XCTAssertLessThanOrEqual(Set(q.weight[(r * q.inFeatures)..<((r + 1) * q.inFeatures)]).count, 16) }
        XCTAssertThrowsError(try LayerwiseCalibration(model: model, windows: []))
    }

    /// --sink-weight w: each window's first token counts w times in H; the others as before (w = 1 is the reference).
    func testSinkWeightScalesTheFirstTokensShareOfH() throws {
        let model = try ModelLoader.load(dir).model
        let calib = try LayerwiseCalibration(model: model, windows: windows)
        let T = windows[0].count, C = 8
        var rng = SeededGenerator(seed: 3)
        let x = (0..<(T * C)).map { _ in Float.random(in: -1...1, using: &rng) }
        func hessian(_ w: Float) throws -> Matrix<Double> {
            calib.sinkWeight = w
            var h = HessianAccumulator(columns: C)
            try calib.accumulate(&h, x, layer: 0, "x")
            return h.H
        }
        let h1 = try hessian(1), h16 = try hessian(16)
        // H(16) − H(1) = (2/1)·15·x₀x₀ᵀ (one sample: the window), x₀ the first token.
        for i in 0..<C {
            for j in 0..<C {
                XCTAssertEqual(h16[i, j] - h1[i, j], 2 * 15 * Double(x[i]) * Double(x[j]), accuracy: 1e-4 * (1 + abs(h16[i, j])))
            }
        }
    }

    /// CDQuant's report carries the loss of its GPTQ start on the same H as its own loss (undamped, as `loss`), so
    /// the report compares GPTQ with CDQuant on identical inputs; not the damped objective the descent minimised.
    func testCDQuantReportsItsGPTQStartOnTheSameHessian() throws {
        let model = try ModelLoader.load(dir).model
        let calib = try LayerwiseCalibration(model: model, windows: windows)
        let grid = try QuantGrid.weight(bits: 3, scheme: .symmetric)
        var gptqLoss: [Double] = [], dampedStart: [Double] = []
        var reports: [LinearReport] = []
        while calib.nextLayer < model.config.numHiddenLayers {
            reports += try calib.quantizeNextLayer { _, _, W, H in
                gptqLoss.append(layerLoss(W, try GPTQ().solve(W: W, H: H, grid: grid).values, H))
                let q = try CDQuant().solve(W: W, H: H, grid: grid)
                dampedStart.append(q.initialLoss!)
                return q
            }
        }
        XCTAssertEqual(reports.count, gptqLoss.count)
        for (i, r) in reports.enumerated() {
            let start = try XCTUnwrap(r.startLoss, "\(r.layer) \(r.name)")
            XCTAssertEqual(start, gptqLoss[i], accuracy: 1e-9 * gptqLoss[i], "\(r.layer) \(r.name)")
            XCTAssertGreaterThan(abs(dampedStart[i] - start), 1e-6 * start, "damping shows in the solver's own objective")
        }
        XCTAssertLessThan(reports.map(\.loss).reduce(0, +), gptqLoss.reduce(0, +), "CDQuant improves on its start overall")
    }

    /// The down_proj inputs kept between its Hessian and the output pass (the default) or recomputed (budget 0):
    /// the same propagated inputs and the same weights, bit for bit.
    func testKeptAndRecomputedDownProjInputsAgree() throws {
        var results: [([[Float]], [Float])] = []
        for budget in [0, 1 << 30] {
            let model = try ModelLoader.load(dir).model
            let calib = try LayerwiseCalibration(model: model, windows: windows)
            calib.downProjInputBudget = budget
            while calib.nextLayer < model.config.numHiddenLayers {
                _ = try calib.quantizeNextLayer { _, _, W, H in
                    try GPTQ().solve(W: W, H: H, grid: .weight(bits: 4, scheme: .symmetric))
                }
            }
            results.append((calib.inputs, model.layers.flatMap { $0.mlp.downProj.weight + $0.selfAttn.qProj.weight }))
        }
        XCTAssertEqual(results[0].0, results[1].0, "propagated inputs")
        XCTAssertEqual(results[0].1, results[1].1, "quantized weights")
    }
}

/// A quantized folder evaluates to exactly what the in-memory quantized model computes.
final class QuantizedFolderTests: XCTestCase {
    func testFolderRoundTripMatchesInMemoryModel() throws {
        let dir = fixturesDir + "/tiny-models/c_qwen2_bias_untied"
        let out = NSTemporaryDirectory() + "coquant-qfolder-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: out) }
        var g = SeededGenerator(seed: 9)
        let windows = (0..<4).map { _ in (0..<16).map { _ in Int(g.next() % 300) } }
        let runs: [(Method, String, Int?, SolverKind?, BasisGranularity?)] = [
            (.gptq, "W4A8KV4", nil, nil, nil), (.quarot, "W4A4KV4", nil, nil, nil), (.rtn, "W3A16", 32, nil, nil),
            (.resq, "W4A4KV4", nil, nil, .perLayer), (.coquant, "W4A4KV4", nil, .cdquant, .shared)]
        for (method, scheme, group, solver, granularity) in runs {
            let loaded = try ModelLoader.load(dir)
            var s = try QuantScheme(parsing: scheme)
            s.weightGroupSize = group
            var options = QuantizeOptions(method: method, scheme: s, solver: solver)
            options.seqlen = 16
            options.nsamples = 4
            if let granularity { options.subspace!.granularity = granularity }
            let basesFile = out + "-bases.safetensors"
            defer { try? FileManager.default.removeItem(atPath: basesFile) }
            if method.usesSubspace { options.subspace!.basesFile = basesFile }
            let result = try quantizeModel(loaded.model, calibration: windows, options: options)
            if method.usesSubspace {
                // The error model was checked on every layer's two block inputs.
                XCTAssertEqual(result.errorChecks.count, 2 * loaded.model.config.numHiddenLayers)
                XCTAssertTrue(result.errorChecks.allSatisfy { $0.predicted > 0 && $0.measured > 0 && $0.measured.isFinite })
                // A second run reads the saved bases, skips the statistics, and quantizes to the same weights.
                let again = try ModelLoader.load(dir)
                let second = try quantizeModel(again.model, calibration: windows, options: options)
                XCTAssertTrue(second.warnings.contains { $0.hasPrefix("bases read from") })
                XCTAssertTrue(second.errorChecks.isEmpty, "no statistics pass, no error-model sample")
                XCTAssertEqual(again.model.layers[1].selfAttn.oProj.weight, loaded.model.layers[1].selfAttn.oProj.weight)
                XCTAssertEqual(second.bases!.R1, result.bases!.R1)
            }
            XCTAssertEqual(result.bases != nil, method.usesSubspace)
            if method.usesSubspace {
                // The low block's codes take 4 bits and the high block's 8: not 8-bit containers for all.
                let q = result.packed["model.layers.0.self_attn.q_proj"]!, r = result.bases!.high
                XCTAssertEqual(q.groupBits, [4, 8])
                XCTAssertEqual(q.rowBytes, ((q.cols - r) * 4 + r * 8 + 7) / 8)
                XCTAssertEqual(result.packed["model.layers.0.mlp.down_proj"]!.groupBits, [4])
            }
            try installFakeQuantization(loaded.model, scheme: s, options: options, subspace: result.subspace)
            _ = try writeQuantizedFolder(out, loaded: loaded, result: result, options: options)
            let reloaded = try ModelLoader.load(out)
            XCTAssertEqual(reloaded.format, "coquant")
            try prepareForInference(reloaded)
            let ids = [1, 2, 3, 250, 17, 9, 9, 100]
            XCTAssertEqual(reloaded.model.forward(ids), loaded.model.forward(ids), "\(method) \(scheme)")
            // And the quantization really happened: differs from the fp32 model.
            XCTAssertGreaterThan(maxAbsDiff(reloaded.model.forward(ids), try ModelLoader.load(dir).model.forward(ids)), 1e-3)
        }
        // Bases computed with the pre-fusion λ compensation are not reused by a run without it.
        let basesFile = out + "-compensated.safetensors"
        defer { try? FileManager.default.removeItem(atPath: basesFile) }
        var options = QuantizeOptions(method: .coquant, scheme: try QuantScheme(parsing: "W4A4KV4"))
        options.seqlen = 16
        options.nsamples = 4
        options.subspace!.basesFile = basesFile
        options.subspace!.preFuseLambdaCompensation = true
        XCTAssertTrue(try quantizeModel(try ModelLoader.load(dir).model, calibration: windows, options: options).bases!.preFusionCompensation)
        options.subspace!.preFuseLambdaCompensation = nil
        XCTAssertThrowsError(try quantizeModel(try ModelLoader.load(dir).model, calibration: windows, options: options)) {
            XCTAssertTrue("\($0)".contains("pre-fusion λ compensation, this run needs wa_cov per-layer"), "\($0)")
        }
        // Nor are shared bases with pooled keys (the default) by a shared run asking for per-head keys.
        let sharedFile = out + "-shared.safetensors"
        defer { try? FileManager.default.removeItem(atPath: sharedFile) }
        options.subspace!.basesFile = sharedFile
        options.subspace!.granularity = .shared
        XCTAssertEqual(try quantizeModel(try ModelLoader.load(dir).model, calibration: windows, options: options).bases!.keyBasis, .pooled)
        options.subspace!.keyBasis = .perHead
        XCTAssertThrowsError(try quantizeModel(try ModelLoader.load(dir).model, calibration: windows, options: options)) {
            XCTAssertTrue("\($0)".contains("wa_cov shared (pooled keys)") && "\($0)".contains("this run needs wa_cov shared (per-head keys)"), "\($0)")
        }

        // One statistics pass serves ResQ and CoQuant, per-layer and shared: a run reading the file gets the bases a
        // run with its own pass computes, bit for bit; a file from other windows is refused, naming the difference.
        let statisticsFile = out + "-statistics.safetensors"
        defer { try? FileManager.default.removeItem(atPath: statisticsFile) }
        func subspaceRun(_ method: Method, _ granularity: BasisGranularity, statistics: String?, windows other: [[Int]]? = nil,
                         edit: (LlamaModel) -> Void = { _ in }) throws -> QuantizationResult {
            var options = QuantizeOptions(method: method, scheme: try QuantScheme(parsing: "W4A4KV4"), solver: .rtn)
            options.seqlen = 16
            options.nsamples = 4
            options.subspace!.granularity = granularity
            options.subspace!.statisticsFile = statistics
            let model = try ModelLoader.load(dir).model
            edit(model)
            return try quantizeModel(model, calibration: other ?? windows, options: options)
        }
        let first = try subspaceRun(.resq, .perLayer, statistics: statisticsFile)
        XCTAssertFalse(first.warnings.contains { $0.hasPrefix("statistics read from") })
        XCTAssertTrue(FileManager.default.fileExists(atPath: statisticsFile))
        for (method, granularity) in [(Method.coquant, BasisGranularity.perLayer), (.coquant, .shared), (.resq, .perLayer)] {
            let shared = try subspaceRun(method, granularity, statistics: statisticsFile)
            let own = try subspaceRun(method, granularity, statistics: nil)
            XCTAssertTrue(shared.warnings.contains { $0.hasPrefix("statistics read from") }, "\(method) \(granularity)")
            XCTAssertEqual(shared.bases!.attention.map(\.data), own.bases!.attention.map(\.data), "\(method) \(granularity)")
            XCTAssertEqual(shared.bases!.keys.flatMap { $0.map(\.data) }, own.bases!.keys.flatMap { $0.map(\.data) })
            XCTAssertEqual(shared.errorChecks.map(\.measured), own.errorChecks.map(\.measured), "the error-model sample is kept too")
        }
        XCTAssertThrowsError(try subspaceRun(.coquant, .perLayer, statistics: statisticsFile, windows: Array(windows.reversed()))) {
            XCTAssertTrue("\($0)".contains("other calibration windows"), "\($0)")
        }
        // A model that differs only in its last layer's down_proj (a fine-tune, say) is another model.
        XCTAssertThrowsError(try subspaceRun(.coquant, .perLayer, statistics: statisticsFile) { m in
            m.layers[m.layers.count - 1].mlp.downProj.weight[0] += 0.5
        }) {
            XCTAssertTrue("\($0)".contains("another model"), "\($0)")
        }

        let existing = NSTemporaryDirectory() + "coquant-qfolder-exists-\(getpid())"
        try FileManager.default.createDirectory(atPath: existing, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: existing) }
        XCTAssertThrowsError(try writeFolderAtomically(existing, overwrite: false) { _ in })
    }

    /// Activation bits per layer type: the down_proj input can get its own width (QuaRot's --int8_down_proj).
    func testDownProjActivationBits() throws {
        let dir = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        for method in [Method.gptq, .coquant] {
            for (downBits, maxLevels) in [(nil, 16), (8 as Int?, 256), (16, Int.max)] {
                let model = try ModelLoader.load(dir).model
                var options = QuantizeOptions(method: method, scheme: try QuantScheme(parsing: "W8A4"))
                options.downProjActivationBits = downBits
                var subspace: SubspaceOnline?
                if method.usesSubspace {
                    var g = SeededGenerator(seed: 1)
                    fuseNorms(model, centerEmbeddings: false)
                    let stats = SubspaceStatistics.collect(model, windows: (0..<4).map { _ in (0..<32).map { _ in Int(g.next() % 300) } }, withQueries: false)
                    subspace = fuseSubspaceBases(model, try buildBases(stats, model: model, objective: .weightActivation, granularity: .shared,
                                                                       highFraction: 0.125, kvWeightAware: false, seed: 0),
                                                 centerEmbeddings: false, normsFused: true)
                }
                try installFakeQuantization(model, scheme: options.scheme, options: options, subspace: subspace)
                let inner = model.hook
                var levels = 0, mlpLevels = 0
                model.hook = { l, site, x, rows, cols in
                    inner?(l, site, x, rows, cols)
                    let distinct = (0..<rows).map { r in Set((0..<cols).map { x[r * cols + $0] }).count }.max() ?? 0
                    if site == .downProjInput { levels = max(levels, distinct) }
                    if site == .mlpInput && !method.usesSubspace { mlpLevels = max(mlpLevels, distinct) }
                }
                _ = model.forward([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
                let what = "\(method) down_proj bits \(downBits.map(String.init) ?? "default")"
                XCTAssertGreaterThan(levels, 1, what + ": the hook saw down_proj's input")
                XCTAssertLessThanOrEqual(levels, maxLevels, what)
                if !method.usesSubspace { XCTAssertGreaterThan(mlpLevels, 1, what + ": the hook saw the MLP input") }
                if downBits != nil { XCTAssertGreaterThan(levels, 16, what) }
                if !method.usesSubspace { XCTAssertLessThanOrEqual(mlpLevels, 16, what + ": other inputs stay at 4 bits") }
            }
        }
    }

    /// The KV cache as QuaRot's reference quantizes it, in every method: keys per (token, head) with 0 forced into
    /// the range, values per (token, head) without; and, once activations or KV are quantized, QuaRot's signed weight
    /// grid in every method.
    func testKVRangeRulesAndWeightGrids() throws {
        let dir = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        let model = try ModelLoader.load(dir).model
        let hd = model.config.headDim
        let scheme = QuantScheme(weightBits: 4, activationBits: 16, kvBits: 4)
        // One head's row of positive values: forcing 0 in moves every grid point, so the two rules differ.
        let row = (0..<hd).map { 1 + Float($0) / Float(hd) }
        for method in [Method.rtn, .gptq, .quarot] {
            try installFakeQuantization(model, scheme: scheme, options: QuantizeOptions(method: method, scheme: scheme))
            for (site, rule) in [(HookSite.keys, RangeRule.includeZero), (.values, .minMax)] {
                var seen = row, expected = row
                // QuaRot rotates the keys (a Hadamard per head) before quantizing them.
                if method == .quarot && site == .keys { OnlineRotations(config: model.config).head.apply(&expected, rows: 1) }
                try ActivationQuantizer(bits: 4, groupSize: hd, rangeRule: rule).apply(&expected, rows: 1, cols: hd)
                seen.withUnsafeMutableBufferPointer { model.hook!(0, site, $0.baseAddress!, 1, hd) }
                XCTAssertEqual(seen, expected, "\(method) \(site)")
            }
        }
        var other = row
        try ActivationQuantizer(bits: 4, groupSize: hd, rangeRule: .minMax).apply(&other, rows: 1, cols: hd)
        var keys = row
        try ActivationQuantizer(bits: 4, groupSize: hd, rangeRule: .includeZero).apply(&keys, rows: 1, cols: hd)
        XCTAssertNotEqual(keys, other, "the test row tells the two range rules apart")

        // Every row of a W4A4KV4 table has QuaRot's signed weight grid (its reference code is QuaRot's, with or
        // without rotations); weight-only rtn/gptq/cdquant keep GPTQ's quant.py grid.
        for method in Method.allCases {
            XCTAssertEqual(try QuantizeOptions(method: method, scheme: scheme).weightGrid().scheme, .signedSymmetric, "\(method)")
        }
        for method in [Method.rtn, .gptq, .cdquant] {
            XCTAssertEqual(try QuantizeOptions(method: method, scheme: QuantScheme(weightBits: 4)).weightGrid().scheme, .symmetric, "\(method)")
        }
    }

    func testSchemeNames() throws {
        XCTAssertEqual(try QuantScheme(parsing: "W4A16"), QuantScheme(weightBits: 4))
        XCTAssertEqual(try QuantScheme(parsing: "w4a16g128"), QuantScheme(weightBits: 4, weightGroupSize: 128))
        XCTAssertEqual(try QuantScheme(parsing: "W4A4KV4"), QuantScheme(weightBits: 4, activationBits: 4, kvBits: 4))
        XCTAssertEqual(try QuantScheme(parsing: "W8A8").name, "W8A8")
        for bad in ["W4", "A4W4", "W4A16g", "W9A16", "W4A3x", "W1A16"] { XCTAssertThrowsError(try QuantScheme(parsing: bad), bad) }
    }
}

final class ResumeTests: XCTestCase {
    struct Interrupt: Error {}

    /// A run interrupted after layer 1 and resumed from its checkpoints gives the uninterrupted run's model.
    func testResumeAfterInterruptMatchesUninterruptedRun() throws {
        let dir = fixturesDir + "/tiny-models/b_llama3_rope_untied"
        let out = NSTemporaryDirectory() + "coquant-resume-\(getpid())"
        var g = SeededGenerator(seed: 4)
        let windows = (0..<3).map { _ in (0..<12).map { _ in Int(g.next() % 300) } }
        var options = QuantizeOptions(method: .gptq, scheme: QuantScheme(weightBits: 3, activationBits: 8))
        options.seqlen = 12
        options.nsamples = 3
        let ids = [5, 6, 7, 8, 200, 1]

        let full = try ModelLoader.load(dir).model
        let expected = try quantizeModel(full, calibration: windows, options: options)

        let store = LayerCheckpointStore(output: out, options: options)
        defer { store.remove() }
        try store.start()
        XCTAssertThrowsError(try quantizeModel(try ModelLoader.load(dir).model, calibration: windows, options: options,
                                               onLayer: { l, done in
            try store.save(layer: l, done)
            if l == 1 { throw Interrupt() }
        }))
        let finished = try store.load()
        XCTAssertEqual(finished.count, 2)
        let resumed = try ModelLoader.load(dir).model
        let result = try quantizeModel(resumed, calibration: windows, options: options, resume: finished)
        XCTAssertEqual(Set(result.packed.keys), Set(expected.packed.keys))
        for (name, p) in expected.packed { XCTAssertEqual(result.packed[name]!.packed, p.packed, name) }
        XCTAssertEqual(result.reports.map(\.loss), expected.reports.map(\.loss))
        XCTAssertEqual(resumed.forward(ids), full.forward(ids))

        var other = options
        other.seed = 1
        XCTAssertThrowsError(try LayerCheckpointStore(output: out, options: other).load())
    }
}
