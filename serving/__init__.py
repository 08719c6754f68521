"""spinecast.serving"""
