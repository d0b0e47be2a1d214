@testable import CoQuantExport
@testable import CoQuantModel
import XCTest

final class GGUFExportTests: XCTestCase {
    /// The exporter's q/k row order is the inverse of the loader's: a GGUF written by us reads back in HF order.
    func testRowOrderInvertsTheLoadersPermutation() {
        for (rows, hd) in [(16, 8), (64, 16), (128, 32)] {
            let order = ModelLoader.ggufRowOrder(rows: rows, headDim: hd)
            XCTAssertEqual(Set(order), Set(0..<rows), "a permutation")
            let hf = (0..<(rows * 3)).map(Float.init)                                   // [rows, 3]
            let gguf = order.flatMap { r in hf[(r * 3)..<(r * 3 + 3)] }
            XCTAssertEqual(ModelLoader.unpermuteRows(gguf, rows: rows, cols: 3, headDim: hd), hf)
        }
    }

    /// llama.cpp wants a token per embedding row: a short vocabulary is padded with unused entries.
    func testVocabularyPaddedToTheEmbeddingRows() {
        let entries: [(String, GGUFWriter.Value)] = [("tokenizer.ggml.tokens", .strings(["a", "b"])),
                                                     ("tokenizer.ggml.token_type", .i32s([1, 3])),
                                                     ("tokenizer.ggml.model", .string("gpt2"))]
        let padded = GGUFExport.paddedVocabulary(entries, to: 4)
        XCTAssertEqual(padded[0].1, .strings(["a", "b", "[PAD2]", "[PAD3]"]))
        XCTAssertEqual(padded[1].1, .i32s([1, 3, 5, 5]))
        XCTAssertEqual(padded[2].1, .string("gpt2"))
        XCTAssertEqual(GGUFExport.paddedVocabulary(entries, to: 2)[0].1, .strings(["a", "b"]))
    }

    /// A K super-block's sub-block scales come back as the integers the grid chose, also when d is subnormal in fp16
    /// (tiny rows of real models): the largest scale then need not be the extreme integer (here 62 of 63, which
    /// assuming 63 would round to a different d), and mins derived as s·z are matched to two ulps.
    func testKBlockScalesDecompose() {
        for (d, ints, range) in [(Float16(1.2e-5), [62, 5, 17, 1, 33, 62, 40, 9], 0...63),
                                 (Float16(0.0123), [63, 5, 17, 1, 33, 62, 40, 9], 0...63),
                                 (Float16(-3.1e-6), [-128, 127, -5, 1, 77, -30, 2, 90, -128, 3, 4, 5, 6, 7, 8, 9], -128...127),
                                 (Float16(2.5e-5), [-31, 7, -32, 1, 30, -3, 2, 9, 12, 3, 4, 5, 6, 7, 8, 9], -32...31)] {
            let v = ints.map { Float(d) * Float($0) }
            var report = GGUFExportReport()
            let (u, n) = GGUFExport.decompose(v, range, exactProducts: true, &report)
            XCTAssertEqual(zip(n, n.indices).map { Float(u) * Float($0.0) }, v, "\(d)")
            XCTAssertEqual(report.roundedParameters, 0)
            // Derived values (one fp32 rounding away from the products) still decompose exactly.
            let derived = v.map { $0 * (1 + Float.ulpOfOne) }
            var r2 = GGUFExportReport()
            _ = GGUFExport.decompose(derived, range, exactProducts: false, &r2)
            XCTAssertEqual(r2.roundedParameters, 0)
        }
        // Values that are no integer multiples of one fp16 unit are rounded, and reported.
        var report = GGUFExportReport()
        _ = GGUFExport.decompose([1.0, 0.3337, 0.5], 0...63, exactProducts: true, &report)
        XCTAssertGreaterThan(report.roundedParameters, 0)
    }

    /// general.file_type follows the linears' majority type (llama.cpp's llama_ftype numbers).
    func testFileType() {
        XCTAssertEqual(GGUFExport.fileType(Array(repeating: .q4_0, count: 7) + [.q8_0]), 2)
        XCTAssertEqual(GGUFExport.fileType([.q4_1]), 3)
        XCTAssertEqual(GGUFExport.fileType([.q8_0, .q8_0, .q4_0]), 7)
        XCTAssertEqual(GGUFExport.fileType([.q5_0]), 8)
        XCTAssertEqual(GGUFExport.fileType([.f16]), 1)
        XCTAssertEqual(GGUFExport.fileType([]), 0)
    }
}
