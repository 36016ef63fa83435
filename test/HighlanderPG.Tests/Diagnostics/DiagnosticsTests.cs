using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Hosting;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace HighlanderPG.Tests.Diagnostics;

[Collection(SharedServer.Name)]
public sealed class DiagnosticsTests(PostgresFixture pg)
{
    [Fact]
    public async Task Health_follows_the_lock_session_and_metrics_count_acquisitions_and_losses()
    {
        var measurements = new ConcurrentQueue<(string Instrument, long Value, string? Node)>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == "HighlanderPG")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string? node = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "highlander.node")
                {
                    node = tag.Value as string;
                }
            }

            measurements.Enqueue((instrument.Name, value, node));
        });
        listener.Start();

        await using var cluster = new TestCluster(pg.ConnectionString);
        await using var proxy = FaultTests.ProxyTo(pg.ConnectionString);
        var node = await cluster.StartNodeAsync("diag", connectionString: proxy.ConnectionString(pg.ConnectionString), services: s => s.AddHealthChecks().AddHighlander());
        await node.WaitForStateAsync("job", SingletonState.Leading);
        var health = node.Host.Services.GetRequiredService<HealthCheckService>();
        var healthy = await health.CheckHealthAsync();
        Assert.Equal(HealthStatus.Healthy, healthy.Status);
        Assert.Equal("Leading (leader diag)", healthy.Entries["highlander"].Data["job"]);
        Assert.Contains(measurements, m => m.Instrument == "highlander.acquisitions" && m.Node == "diag" && m.Value == 1);

        proxy.SetMode(ProxyMode.Blackhole);
        await node.WaitForStateAsync("job", SingletonState.Disconnected);
        var degraded = await health.CheckHealthAsync();
        Assert.Equal(HealthStatus.Degraded, degraded.Status);
        Assert.Contains("No working lock session", degraded.Entries["highlander"].Description);
        Assert.Contains(measurements, m => m.Instrument == "highlander.leadership.losses" && m.Node == "diag");
        Assert.Contains(measurements, m => m.Instrument == "highlander.session.losses" && m.Node == "diag");
    }
}
