import XCTest
@testable import CoQuantQuant

final class CalibrationTests: XCTestCase {
    /// Check values of COQUANT_RESQ.md §6.2(g), computed with CPython's `random`.
    func testPythonRandomMatchesCPython() {
        var r = PythonRandom(seed: 0)
        XCTAssertEqual((0..<3).map { _ in r.getrandbits(32) }, [3_626_764_237, 1_654_615_998, 3_255_389_356])
        var s = PythonRandom(seed: 0)
        XCTAssertEqual((0..<5).map { _ in s.randint(0, 2_000_000 - 2048 - 1) }, [1_770_880, 807_917, 1_589_545, 1_866_976, 882_002])
    }

    func testWindows() throws {
        let ids = Array(0..<10_000)
        let w = try calibrationWindows(ids: ids, nsamples: 4, seqlen: 100)
        XCTAssertEqual(w.count, 4)
        for window in w {
            XCTAssertEqual(window.count, 100)
            XCTAssertEqual(window.last! - window.first!, 99)    // contiguous slices of the stream
        }
        XCTAssertEqual(try calibrationWindows(ids: ids, nsamples: 4, seqlen: 100), w)   // same seed, same windows
        // The reference's starts: randint(0, n − seqlen − 1) with CPython's generator (values above).
        let stream = try calibrationWindows(ids: Array(0..<2_000_000), nsamples: 5, seqlen: 2048)
        XCTAssertEqual(stream.map { $0[0] }, [1_770_880, 807_917, 1_589_545, 1_866_976, 882_002])
        XCTAssertNotEqual(try calibrationWindows(ids: ids, nsamples: 4, seqlen: 100, seed: 1), w, "another seed")
        XCTAssertThrowsError(try calibrationWindows(ids: Array(0..<50), nsamples: 1, seqlen: 100))
    }
}
