import CCoQuantKernels
import Foundation
import Synchronization

/// The forward pass's persistent workers. A decoded token runs ≈ 250 small parallel loops (each linear's GEMV is
/// tens of microseconds); `DispatchQueue.concurrentPerform` costs several microseconds per call and far more when
/// its threads have gone cold, a large share of such a loop. These threads stay hot: after a loop they spin for
/// about a millisecond waiting for the next, then sleep on a semaphore until woken.
///
/// One loop runs at a time: a `run` that finds the pool busy (a nested loop, or another thread's) runs its tasks on
/// the calling thread, in order.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool(threads: forwardWorkers - 1)

    private let threads: Int
    private let generation = Atomic<Int>(0)     // bumped to start a loop
    private let nextTask = Atomic<Int>(0)
    private let done = Atomic<Int>(0)           // workers finished with the current loop
    private let busy = Atomic<Bool>(false)
    /// Per worker: whether it sleeps, and its wake-up call.
    private final class Slot: Sendable {
        let sleeping = Atomic<Bool>(false)
        let wake = DispatchSemaphore(value: 0)
    }
    private let slots: [Slot]
    // Written by `run` before the generation bump (release) and read by workers after seeing it (acquire).
    private var taskCount = 0
    private var body: ((Int) -> Void)?

    init(threads: Int) {
        self.threads = threads
        slots = (0..<threads).map { _ in Slot() }
        for i in 0..<threads {
            let t = Thread { [unowned self] in self.work(i) }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    func run(_ count: Int, _ body: (Int) -> Void) {
        guard threads > 0, count > 1, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { body in
            self.body = body
            taskCount = count
            nextTask.store(0, ordering: .relaxed)
            done.store(0, ordering: .relaxed)
            generation.add(1, ordering: .releasing)
            for slot in slots where slot.sleeping.exchange(false, ordering: .acquiringAndReleasing) { slot.wake.signal() }
            runTasks(body, count)
            var spins = 0
            while done.load(ordering: .acquiring) < threads { spins += 1; spinPause(spins) }
            self.body = nil
        }
        busy.store(false, ordering: .releasing)
    }

    private func runTasks(_ body: (Int) -> Void, _ count: Int) {
        while true {
            let i = nextTask.add(1, ordering: .relaxed).oldValue
            if i >= count { return }
            body(i)
        }
    }

    private func work(_ index: Int) {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins < 20_000 { spinPause(spins); continue }
                // Idle for a while: sleep until `run` wakes us (re-checking, so a bump between the two is not lost).
                let slot = slots[index]
                slot.sleeping.store(true, ordering: .sequentiallyConsistent)
                if generation.load(ordering: .sequentiallyConsistent) != seen {
                    if !slot.sleeping.exchange(false, ordering: .acquiringAndReleasing) { slot.wake.wait() }
                    break
                }
                slot.wake.wait()
                spins = 0
            }
            seen = generation.load(ordering: .acquiring)
            if let body { runTasks(body, taskCount) }
            done.add(1, ordering: .releasing)
        }
    }
}

/// `pause` (tens of nanoseconds, so a hand-off is noticed at once), and every 256th spin a sched_yield, so a
/// runnable thread that shares this core (OpenBLAS's, another process's) gets through.
@inline(__always)
private func spinPause(_ spins: Int) {
    if spins & 255 == 0 { sched_yield() } else { cq_pause() }
}
