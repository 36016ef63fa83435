using HighlanderPG.Benchmarks.Measurement;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// One case: optional set-up, one iteration (returns what it measured), optional tear-down and conclusion. Cases of a
/// group run interleaved (see <see cref="BenchContext.RunGroupAsync"/>).
/// </summary>
internal sealed class BenchCase(CaseResult result, int iterations, Func<int, CancellationToken, Task<Measured>> iterate)
{
    public CaseResult Result { get; } = result;

    public int Iterations { get; } = iterations;

    public Func<int, CancellationToken, Task<Measured>> Iterate { get; } = iterate;

    public Func<CancellationToken, Task>? SetUp { get; init; }

    public Func<Task>? TearDown { get; init; }

    /// <summary>Adds notes once the iterations are done.</summary>
    public Action? Conclude { get; init; }

    /// <summary>Whether to run the warm-up iterations (not for a case whose iteration lasts a minute).</summary>
    public bool WarmUp { get; init; } = true;

    /// <summary>
    /// Whether the iterations run all at once (each with its own key, holder and waiter): only for a case whose
    /// iterations last tens of seconds, where milliseconds of contention do not show.
    /// </summary>
    public bool Concurrent { get; init; }
}
