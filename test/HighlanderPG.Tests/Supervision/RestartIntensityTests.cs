using HighlanderPG.Leasing;
using HighlanderPG.Supervision;
using Microsoft.Extensions.Time.Testing;

namespace HighlanderPG.Tests.Supervision;

public sealed class RestartIntensityTests
{
    [Fact]
    public void More_than_max_restarts_within_the_window_is_a_crash_loop()
    {
        var time = new FakeTimeProvider();
        var intensity = new RestartIntensity(time, maxRestarts: 3, window: TimeSpan.FromSeconds(10));
        Assert.True(intensity.TryRecord());
        Assert.True(intensity.TryRecord());
        Assert.True(intensity.TryRecord());
        Assert.False(intensity.TryRecord());
    }

    [Fact]
    public void Restarts_older_than_the_window_are_forgotten()
    {
        var time = new FakeTimeProvider();
        var intensity = new RestartIntensity(time, maxRestarts: 2, window: TimeSpan.FromSeconds(10));
        Assert.True(intensity.TryRecord());
        Assert.True(intensity.TryRecord());
        time.Advance(TimeSpan.FromSeconds(11));
        Assert.True(intensity.TryRecord());
        Assert.True(intensity.TryRecord());
        Assert.False(intensity.TryRecord());
    }

    [Fact]
    public void Backoff_doubles_up_to_its_cap_with_jitter_and_resets()
    {
        var backoff = new Backoff(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(800), new Random(42));
        var steps = new[] { 100, 200, 400, 800, 800, 800 };
        foreach (var step in steps)
        {
            var delay = backoff.Next();
            Assert.InRange(delay.TotalMilliseconds, step / 2.0, step);
        }

        backoff.Reset();
        Assert.InRange(backoff.Next().TotalMilliseconds, 50, 100);
    }
}
