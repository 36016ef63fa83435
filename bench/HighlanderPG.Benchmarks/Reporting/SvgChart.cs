using System.Globalization;
using System.Net;
using System.Text;
using HighlanderPG.Benchmarks.Measurement;

namespace HighlanderPG.Benchmarks.Reporting;

/// <summary>
/// A dot plot of distributions as a self-contained SVG (no package): one row per series, every sample a dot on a
/// logarithmic millisecond axis (spread vertically so that they do not hide each other), the median a black bar, the
/// maximum a red one, and the numbers at the right.
/// </summary>
internal static class SvgChart
{
    private const int Width = 1000;
    private const int LabelWidth = 330;
    private const int NumbersWidth = 210;
    private const int RowHeight = 34;
    private const int Top = 48;
    private const int Bottom = 40;

    public sealed record Series(string Label, IReadOnlyList<double> Milliseconds, int Censored = 0);

    public static string Render(string title, IReadOnlyList<Series> series)
    {
        var values = series.SelectMany(s => s.Milliseconds).Where(v => v > 0).ToList();
        var min = values.Count == 0 ? 0.1 : values.Min();
        var max = values.Count == 0 ? 1000 : values.Max();
        var low = Math.Pow(10, Math.Floor(Math.Log10(min)));
        var high = Math.Pow(10, Math.Ceiling(Math.Log10(max)));
        if (high <= low)
        {
            high = low * 10;
        }

        var plotLeft = LabelWidth;
        var plotRight = Width - NumbersWidth;
        double X(double ms) => plotLeft + ((Math.Log10(Math.Max(ms, low)) - Math.Log10(low)) / (Math.Log10(high) - Math.Log10(low)) * (plotRight - plotLeft));
        var height = Top + (series.Count * RowHeight) + Bottom;

        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"""<svg xmlns="http://www.w3.org/2000/svg" width="{Width}" height="{height}" viewBox="0 0 {Width} {height}" font-family="sans-serif" font-size="12">""").AppendLine();
        svg.Append(CultureInfo.InvariantCulture, $"""<rect width="{Width}" height="{height}" fill="white"/>""").AppendLine();
        svg.Append(CultureInfo.InvariantCulture, $"""<text x="10" y="20" font-size="14" font-weight="bold">{Escape(title)}</text>""").AppendLine();
        svg.Append(CultureInfo.InvariantCulture, $"""<text x="10" y="36" fill="#555">each dot one sample; black bar: median; red bar: maximum; log scale</text>""").AppendLine();

        // Decades and their halves, with labels.
        for (var decade = low; decade <= high * 1.0001; decade *= 10)
        {
            foreach (var tick in new[] { decade, decade * 2, decade * 5 })
            {
                if (tick > high * 1.0001)
                {
                    continue;
                }

                var x = X(tick);
                var major = tick == decade;
                svg.Append(CultureInfo.InvariantCulture, $"""<line x1="{x:0.#}" y1="{Top - 4}" x2="{x:0.#}" y2="{height - Bottom}" stroke="{(major ? "#bbb" : "#e4e4e4")}"/>""").AppendLine();
                svg.Append(CultureInfo.InvariantCulture, $"""<text x="{x:0.#}" y="{height - Bottom + 16}" text-anchor="middle" fill="#333">{Tick(tick)}</text>""").AppendLine();
            }
        }

        for (var row = 0; row < series.Count; row++)
        {
            var s = series[row];
            var middle = Top + (row * RowHeight) + (RowHeight / 2.0);
            if (row % 2 == 1)
            {
                svg.Append(CultureInfo.InvariantCulture, $"""<rect x="0" y="{middle - (RowHeight / 2.0):0.#}" width="{Width}" height="{RowHeight}" fill="#f4f6fa" fill-opacity="0.6"/>""").AppendLine();
            }

            svg.Append(CultureInfo.InvariantCulture, $"""<text x="{plotLeft - 8}" y="{middle + 4:0.#}" text-anchor="end">{Escape(s.Label)}</text>""").AppendLine();
            var sorted = s.Milliseconds.Order().ToList();
            var opacity = sorted.Count > 200 ? 0.25 : 0.55;
            svg.Append(CultureInfo.InvariantCulture, $"""<g fill="#2563eb" fill-opacity="{opacity}">""").AppendLine();
            for (var i = 0; i < sorted.Count; i++)
            {
                // A fixed, sample-independent spread: the golden-ratio sequence over the row's height.
                var jitter = ((i * 0.6180339887) % 1.0 - 0.5) * (RowHeight - 12);
                svg.Append(CultureInfo.InvariantCulture, $"""<circle cx="{X(sorted[i]):0.#}" cy="{middle + jitter:0.#}" r="2.4"/>""").AppendLine();
            }

            svg.AppendLine("</g>");

            if (sorted.Count > 0)
            {
                var summary = Summary.Of(sorted);
                var p50 = summary.P50!.Value.Milliseconds;
                var peak = sorted[^1];
                svg.Append(CultureInfo.InvariantCulture, $"""<line x1="{X(p50):0.#}" y1="{middle - 13:0.#}" x2="{X(p50):0.#}" y2="{middle + 13:0.#}" stroke="black" stroke-width="2.5"/>""").AppendLine();
                svg.Append(CultureInfo.InvariantCulture, $"""<line x1="{X(peak):0.#}" y1="{middle - 13:0.#}" x2="{X(peak):0.#}" y2="{middle + 13:0.#}" stroke="#dc2626" stroke-width="2"/>""").AppendLine();
                var numbers = $"n {sorted.Count}{(s.Censored > 0 ? $" (+{s.Censored} > cap)" : "")}, p50 {Format.Milliseconds(p50)}, max {Format.Milliseconds(peak)}";
                svg.Append(CultureInfo.InvariantCulture, $"""<text x="{plotRight + 8}" y="{middle + 4:0.#}" fill="#333" font-size="11">{Escape(numbers)}</text>""").AppendLine();
            }
        }

        svg.AppendLine("</svg>");
        return svg.ToString();
    }

    private static string Escape(string text) => WebUtility.HtmlEncode(text);

    private static string Tick(double ms) => ms >= 1000
        ? (ms / 1000).ToString("0.###", CultureInfo.InvariantCulture) + " s"
        : ms.ToString("0.###", CultureInfo.InvariantCulture) + " ms";
}
