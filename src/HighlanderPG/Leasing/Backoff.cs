namespace HighlanderPG.Leasing;

/// <summary>Capped exponential backoff with jitter (each delay is drawn between half and all of the current step).</summary>
internal sealed class Backoff(TimeSpan min, TimeSpan max, Random? random = null)
{
    private readonly TimeSpan _min = min;
    private readonly Random _random = random ?? Random.Shared;
    private TimeSpan _step = min;

    public TimeSpan Next()
    {
        var step = _step;
        _step = TimeSpan.FromTicks(Math.Min(max.Ticks, step.Ticks * 2));
        var half = step.Ticks / 2;
        return TimeSpan.FromTicks(half + (long)(_random.NextDouble() * (step.Ticks - half)));
    }

    public void Reset() => _step = _min;
}
