"""The one stylesheet of the pages allfed writes (the run report and the analysis tables): each
page embeds it, so it stays self-contained; and the two words a page shows for a figure it leaves
out, one meaning each. The sheet is ``Markup``: a template puts it in its ``<style>`` as it is
(autoescaping would turn its quotes into entities, which CSS does not read)."""

from markupsafe import Markup

# held back by the dissemination rule: a count from 1 to 20, or a figure that rests on one
WITHHELD = "withheld"
NA = "n/a"  # released, but undefined or too uncertain to mean anything (its reason goes with it)

PAGE_CSS = Markup("""
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
  max-width: 1080px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid
  #ccc; padding-bottom: 0.2em; } h3 { margin-bottom: 0.3em; }
.lead { font-size: 1.08em; } .muted { color: #555; font-size: 0.92em; }
.status { display: inline-block; padding: 0.15em 0.6em; border-radius: 0.3em; font-weight: 600; }
.completed { background: #e3f4e6; color: #17612a; } .failed { background: #fde5e4; color: #9b1c13; }
.box { border-left: 4px solid #9b1c13; background: #fdf1f0; padding: 0.6em 1em; margin: 1em 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 0.4em; padding: 0.6em 1em; flex: 1 1 9em; }
.card .value { font-size: 1.4em; font-weight: 600; } .card .label { color: #555; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.93em; }
th, td { border-bottom: 1px solid #e2e2e2; padding: 0.3em 0.7em; text-align: left;
  vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; } .withheld, .na { color: #8a5a00; font-style: italic; }
figure { margin: 1.4em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.93em; max-width: 60em; }
td small { display: block; color: #555; } sup { color: #8a5a00; }
""")
