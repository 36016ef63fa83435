namespace HighlanderPG.Benchmarks.Measurement;

/// <summary>
/// Nearest-rank percentiles (the smallest sample with at least q of the samples at or below it: with 30 samples, p50
/// is the 15th, p90 the 27th and p99 the 30th, i.e. the maximum). A censored sample counts as greater than every
/// measured one; a percentile that lands on one is reported as "&gt; cap".
/// </summary>
internal sealed class Summary
{
    private readonly Sample[] _sorted;

    public Summary(IEnumerable<Sample> samples)
    {
        _sorted = [.. samples.OrderBy(s => s.Censored).ThenBy(s => s.Milliseconds)];
    }

    public int Count => _sorted.Length;

    public int CensoredCount => _sorted.Count(s => s.Censored);

    public Sample? P50 => Percentile(0.50);

    public Sample? P90 => Percentile(0.90);

    public Sample? P99 => Percentile(0.99);

    public Sample? Max => _sorted.Length == 0 ? null : _sorted[^1];

    public Sample? Min => _sorted.Length == 0 ? null : _sorted[0];

    public Sample? Percentile(double q)
    {
        if (_sorted.Length == 0)
        {
            return null;
        }

        var rank = (int)Math.Ceiling(q * _sorted.Length);
        return _sorted[Math.Clamp(rank, 1, _sorted.Length) - 1];
    }

    public static Summary Of(IEnumerable<double> milliseconds) => new(milliseconds.Select(m => new Sample(m, false)));
}
