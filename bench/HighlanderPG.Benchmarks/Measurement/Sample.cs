using System.Diagnostics;

namespace HighlanderPG.Benchmarks.Measurement;

/// <summary>
/// One measured hand-over, in milliseconds on the waiter's <see cref="Stopwatch"/>. A censored sample is one that did
/// not happen within the cap: its true value is only known to be greater than <see cref="Milliseconds"/>.
/// </summary>
internal readonly record struct Sample(double Milliseconds, bool Censored)
{
    public static Sample Between(long startTimestamp, long endTimestamp) => new(ToMilliseconds(endTimestamp - startTimestamp), false);

    public static Sample Beyond(TimeSpan cap) => new(cap.TotalMilliseconds, true);

    public static double ToMilliseconds(long stopwatchTicks) => stopwatchTicks * 1000.0 / Stopwatch.Frequency;
}
