"""The measuring wing: everything that loads, runs, times and scores models around the patchers.

One module per idea, so a newcomer can tell the rooms apart:

* :mod:`tomesd.lab.loading`: diffusion pipelines from the demo model, folders, single files or model ids;
* :mod:`tomesd.lab.timing`: the one interleaved timer, pipeline-call timing, peak memory;
* :mod:`tomesd.lab.quality`: PSNR / SSIM and their average against a baseline (no diffusers needed);
* :mod:`tomesd.lab.visualize`: ToMe's merge groups drawn over an image;
* :mod:`tomesd.lab.generation`: one timed generation at one merge ratio;
* :mod:`tomesd.lab.sweep`: one prompt and seed at several ratios side by side (what the app shows);
* :mod:`tomesd.lab.batch`: the batch engine behind ``tomesd generate`` (jobs, resume, logs, summary);
* :mod:`tomesd.lab.bench`: U-Net and pipeline benchmark rows and tables behind ``tomesd bench``;
* :mod:`tomesd.lab.vision_bench`: the timm / SAM benchmark behind ``tomesd bench-vision``;
* :mod:`tomesd.lab.llm_bench`: the K-token prefill benchmark behind ``tomesd bench-llm``;
* :mod:`tomesd.lab.llm_examples`: one prompt answered at several K, behind ``tomesd llm-examples``;
* :mod:`tomesd.lab.llm_reproduce`: the K-token reproductions behind ``tomesd reproduce-llm``;
* :mod:`tomesd.lab.demo_eval`: the demo model's adherence and quality report behind ``tomesd evaluate-demo``.

Imports run one way: command lines and the app -> ``tomesd.lab`` -> ``tomesd.patch`` / ``tomesd.llm`` /
``tomesd.demo`` -> ``tomesd.merge``. Nothing here is imported eagerly: ``import tomesd.lab`` loads no model
library.
"""
